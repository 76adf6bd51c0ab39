"""Identifiers of the shop: file ids (R4), version tags (R12). Pure, vectorised over Series."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# R4: FILE_<version_tag>_<customer>_<job_id>[_<extra>], job id = two digit groups joined by "_".
# Bounded lengths: an absurd id is recorded as not matching rather than carried into keys.
_FILE_ID = (
    r"^FILE_(?P<version_tag>[^_]{{1,40}})_(?P<customer>{customer})"
    r"_(?P<job_id>[0-9]{{1,20}}_[0-9]{{1,20}})(?:_.*)?$"
)

# The same extraction as an SQL expression; the logs migration indexes exactly this text (R9).
FILE_JOB_SQL = "substring(file_id from '^FILE_[^_]+_[^_]+_([0-9]+_[0-9]+)(?:_|$)')"

_NUMERIC = re.compile(r"^[0-9]+$")


def file_id_regex(customer: str) -> re.Pattern[str]:
    return re.compile(_FILE_ID.format(customer=re.escape(customer)), re.DOTALL)


def parse_file_id(file_id: str, customer: str = "Labex") -> tuple[str, str] | None:
    """``(job_id, version_tag)`` of one file id, or None when it does not match R4."""
    match = file_id_regex(customer).match(file_id) if isinstance(file_id, str) else None
    return (match["job_id"], match["version_tag"]) if match else None


def parse_file_ids(file_ids: pd.Series, customer: str = "Labex") -> pd.DataFrame:
    """Columns ``job_id``, ``version_tag`` (NA where the id does not match R4), aligned to input.

    Each distinct id is matched once: a window repeats the same files many times.
    """
    codes, uniques = pd.factorize(file_ids.astype("string"), use_na_sentinel=True)
    pattern = file_id_regex(customer)
    matches = [pattern.match(u) for u in uniques]
    # The trailing None is what code -1 (a missing id) picks.
    job_ids = np.array([m["job_id"] if m else None for m in matches] + [None], dtype=object)
    tags = np.array([m["version_tag"] if m else None for m in matches] + [None], dtype=object)
    return pd.DataFrame(
        {
            "job_id": pd.array(job_ids[codes], dtype="string"),
            "version_tag": pd.array(tags[codes], dtype="string"),
        },
        index=file_ids.index,
    )


def version_sort_key(tag: str) -> tuple[int, int, str]:
    """Numbers compare numerically and sort below non-numeric tags, which compare as text (R12)."""
    if _NUMERIC.match(tag):
        return (0, int(tag), "")
    return (1, 0, tag)


def highest_versions(versions: pd.DataFrame) -> pd.DataFrame:
    """The highest ``version_tag`` per ``job_id`` of a frame with those two columns."""
    distinct = versions[["job_id", "version_tag"]].drop_duplicates()
    if distinct.empty:
        return distinct.reset_index(drop=True)
    rank = distinct["version_tag"].map(version_sort_key)
    ordered = distinct.assign(_rank=rank).sort_values(["job_id", "_rank"])
    return (
        ordered.groupby("job_id", sort=False).tail(1).drop(columns="_rank").reset_index(drop=True)
    )
