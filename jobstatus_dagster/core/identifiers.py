"""Identifiers of the shop: file ids (R4), version tags (R12). Pure, vectorised over Series."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from jobstatus_dagster.core.plan import (
    FAILURE_COLUMNS,
    FOREIGN_FILE,
    IDENTIFIER_TOO_LONG,
    UpdatePlan,
    failure_rows,
)

# R4: identifiers read from any table compare after trimming exactly these characters, in Python
# (``trim_id``/``trim_ids``) and in SQL (``trimmed_sql``). Python's bare ``str.strip()`` would
# also drop other Unicode whitespace that SQL keeps, and the two sides would disagree.
ID_WHITESPACE = " \t\n\r"
_SQL_ID_WHITESPACE = r"E' \t\n\r'"

# R4: FILE_<version_tag>_<customer>_<job_id>[_<extra>], job id = two digit groups joined by "_".
# Bounded lengths: an absurd id is recorded as not matching rather than carried into keys.
# Matched with fullmatch on the trimmed id: "$" would also match before a trailing newline.
# Any customer token: a well-formed id of another customer (R20: not ours, not malformed).
_ANY_CUSTOMER = "[^_]{1,40}"

# R20: what a file id is to us.
OURS, FOREIGN, MALFORMED = "ours", "foreign", "malformed"
FOREIGN_FILE_SOURCE = "imposition_file_mapping"  # where the id was read, not any one event


def _file_id_pattern(customer_re: str, *, named: bool) -> str:
    """R4's shape around a customer regex; Python (named groups) and Postgres ARE alike."""

    def group(name: str) -> str:
        return f"?P<{name}>" if named else ""

    return (
        f"FILE_({group('version_tag')}[^_]{{1,40}})_({group('customer')}{customer_re})"
        f"_({group('job_id')}[0-9]{{1,20}}_[0-9]{{1,20}})(?:_.*)?"
    )


def trimmed_sql(column: str) -> str:
    """R4: ``column`` trimmed as ``trim_ids`` trims; the migrations index exactly this text, so
    a lookup must use it verbatim to reach its index."""
    return f"btrim({column}, {_SQL_ID_WHITESPACE})"


# R1/R4: a *_operations row's whole trimmed key as one value, as logs migration
# 0013_operation_row_keys hash-indexes it (a hash index accepts a key of any length). The
# separator is the ASCII unit separator; a lookup also compares each column, so an identifier
# holding it can never match a wrong row.
_SQL_KEY_SEPARATOR = r" || E'\x1f' || "


def row_key_sql(columns: list[str], *, trim: bool = True) -> str:
    """The key expression over ``columns`` (trimmed, as the index holds it; ``trim=False`` for
    values already trimmed, e.g. a temp table's). Must stay verbatim what 0013 indexes."""
    return _SQL_KEY_SEPARATOR.join(trimmed_sql(c) if trim else c for c in columns)


# The same extraction as an SQL expression, on the trimmed id (R4); the logs migration
# 0002_trimmed_identifiers indexes exactly this text (R9).
FILE_JOB_SQL = (
    f"substring({trimmed_sql('file_id')} from '^FILE_[^_]+_[^_]+_([0-9]+_[0-9]+)(?:_|$)')"
)

_NUMERIC = re.compile(r"^[0-9]+$")
_DIGIT_RUNS = re.compile(r"([0-9]+)")
_SEPARATORS = re.compile(r"[\s\-]+")


def trim_id(value: str) -> str:
    """R4: one identifier without its surrounding whitespace."""
    return value.strip(ID_WHITESPACE)


def trim_ids(values: pd.Series) -> pd.Series:
    """R4: identifiers (any dtype, NA kept) as trimmed strings."""
    return values.astype("string").str.strip(ID_WHITESPACE)


def file_id_regex(customer: str) -> re.Pattern[str]:
    """R4's pattern for ``customer``; use ``fullmatch`` on a trimmed id."""
    return re.compile(_file_id_pattern(re.escape(customer), named=True), re.DOTALL)


def file_id_sql_patterns(customer: str) -> tuple[str, str]:
    """R4's patterns as Postgres regexes for a trimmed id (``~``): ``customer``'s, and any
    customer's. Same semantics as ``file_id_regex`` ('.' matches newlines, '$' only the end)."""
    return (
        f"^{_file_id_pattern(re.escape(customer), named=False)}$",
        f"^{_file_id_pattern(_ANY_CUSTOMER, named=False)}$",
    )


_ANY_FILE_ID = re.compile(_file_id_pattern(_ANY_CUSTOMER, named=True), re.DOTALL)


def parse_file_id(file_id: str, customer: str = "Labex") -> tuple[str, str] | None:
    """``(job_id, version_tag)`` of one file id, or None when it does not match R4."""
    if not isinstance(file_id, str):
        return None
    match = file_id_regex(customer).fullmatch(trim_id(file_id))
    return (match["job_id"], match["version_tag"]) if match else None


def parse_file_ids(file_ids: pd.Series, customer: str = "Labex") -> pd.DataFrame:
    """Columns ``job_id``, ``version_tag`` (NA where the id does not match R4), aligned to input.

    Each distinct id is matched once: a window repeats the same files many times.
    """
    codes, uniques = pd.factorize(trim_ids(file_ids), use_na_sentinel=True)
    pattern = file_id_regex(customer)
    matches = [pattern.fullmatch(u) for u in uniques]
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


def normalise_operation(name: str) -> str:
    """R7: lower case, spaces and hyphens to "_" ("Kiss Cut" → "kiss_cut"). Shared by scans and
    operation_codes (R8), so a name means the same on both sides."""
    return _SEPARATORS.sub("_", name.strip().lower()).strip("_")


def normalise_operation_codes(codes: pd.DataFrame) -> pd.DataFrame:
    """R8: operation_codes rows (operation, operation_id) → one row per normalised name (R7),
    codes trimmed (R4; empty means no code). Where rows collide ('Die Cut', 'die-cut'), one with a
    code wins, then the row already spelled normalised, then the lowest code: a function of the
    table alone (R23), and never two codes for one name in the writer's join."""
    raw = codes["operation"].astype("string")
    names = pd.Series(
        [normalise_operation(n) if isinstance(n, str) else None for n in raw],
        index=codes.index,
        dtype="string",
    )
    ids = trim_ids(codes["operation_id"])
    ids = ids.where(ids != "")
    ranked = pd.DataFrame(
        {
            "operation": names,
            "operation_id": ids,
            "_no_code": ids.isna().astype(bool),
            "_respelled": (names != raw).fillna(True).astype(bool),
        }
    )
    ranked = ranked[names.notna() & (names != "")]
    ranked = ranked.sort_values(
        ["operation", "_no_code", "_respelled", "operation_id"], kind="stable", na_position="last"
    )
    return (
        ranked.drop_duplicates("operation")[["operation", "operation_id"]]
        .sort_values("operation")
        .reset_index(drop=True)
    )


def classify_file_ids(file_ids: pd.Series, customer: str = "Labex") -> pd.Series:
    """R4/R20, aligned to input: OURS (matches R4 for ``customer``), FOREIGN (well-formed with
    another customer token: not ours, recorded once per file id as FOREIGN_FILE) or MALFORMED
    (bad_file_id). A token equal to ours but for case is MALFORMED: most likely our own file
    mistyped, which a data-quality check should show, not hide."""
    codes, uniques = pd.factorize(trim_ids(file_ids), use_na_sentinel=True)
    ours = file_id_regex(customer)
    kinds = []
    for value in uniques:
        if ours.fullmatch(value):
            kinds.append(OURS)
            continue
        match = _ANY_FILE_ID.fullmatch(value)
        other = match is not None and match["customer"].casefold() != customer.casefold()
        kinds.append(FOREIGN if other else MALFORMED)
    labels = np.array([*kinds, MALFORMED], dtype=object)  # code -1 (a missing id) is malformed
    return pd.Series(labels[codes], index=file_ids.index, dtype="string")


def _customer_token(file_id: str) -> str:
    match = _ANY_FILE_ID.fullmatch(file_id)
    return match["customer"] if match else ""


def foreign_file_failures(file_ids: pd.Series, customer: str = "Labex") -> pd.DataFrame:
    """R20: one FOREIGN_FILE failure per distinct foreign id among ``file_ids``, keyed
    (FOREIGN_FILE_SOURCE, 0, FOREIGN_FILE, file id): whichever event, run or source meets the
    file, the row is the same, so it is recorded once and never re-counted (R17, R23)."""
    trimmed = trim_ids(file_ids)
    foreign = pd.Series(
        trimmed[classify_file_ids(trimmed, customer) == FOREIGN].dropna().unique(), dtype="string"
    ).sort_values(ignore_index=True)
    tokens = foreign.map(_customer_token)
    return failure_rows(
        pd.DataFrame({"source_id": 0}, index=foreign.index),
        FOREIGN_FILE_SOURCE,
        FOREIGN_FILE,
        foreign,
        "file id "
        + foreign
        + " belongs to customer "
        + tokens
        + ", not "
        + customer
        + "; another customer's file, skipped",
    )


def natural_key(text: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """R6's natural order: digit runs compare as numbers, the rest as text ('RL-10' > 'RL-9',
    '10' > '9'); the text itself breaks what numbers tie ('RL-09', 'RL-9'), so the order is
    total and a choice made with it is a function of the data (R22)."""
    parts = _DIGIT_RUNS.split(text)  # digit runs at the odd positions
    key = tuple(
        (0, int(part), "") if i % 2 else (1, 0, part) for i, part in enumerate(parts) if part
    )
    return key, text


def version_sort_key(tag: str | None) -> tuple[int, int, str]:
    """Numbers compare numerically and sort below non-numeric tags, which compare as text (R12).
    A row of the shop's with no version tag (NULL) sorts first: the read side shows it, R20."""
    if tag is None:
        return (-1, 0, "")
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


# ----- R1/R20: identifiers that reach one of our btree keys -----------------------------------
# A btree (version 4) index row holds at most 2,704 bytes. Our widest keys hold two identifiers
# besides short columns (imposition_status_updates_source_key: imposition id and operation;
# job_operation_state: job id and operation), so each identifier that reaches one is limited to
# 1,000 bytes of UTF-8, counted uncompressed (Postgres may compress a key, but a value of random
# text does not compress and must not decide whether a source stops). Job ids and version tags
# are already bounded by R4/R5's patterns; imposition ids and operation names are not.
MAX_KEY_BYTES = 1000
# processing_failures_key holds the subject: at most this many characters (4 bytes each at most).
SUBJECT_CHARS = 200


def utf8_lengths(values: pd.Series) -> pd.Series:
    """Bytes of each value as UTF-8 (0 for NA), aligned to input."""
    text = values.astype("string")
    chars = text.str.len().fillna(0).astype("int64")
    lengths = chars.copy()
    wide = ~text.isna() & (chars > 0)
    # Only values that may hold non-ASCII text are encoded (ASCII: one byte per character).
    if wide.any():
        sub = text[wide]
        ascii_only = sub.map(str.isascii).astype(bool)
        encoded = sub[~ascii_only].map(lambda v: len(v.encode("utf-8")))
        lengths[encoded.index] = encoded.astype("int64")
    return lengths


def key_too_long(values: pd.Series) -> pd.Series:
    """R20: True where a value is longer than an identifier in one of our index keys may be."""
    return (utf8_lengths(values) > MAX_KEY_BYTES).astype(bool)


def short_subject(value: str) -> str:
    """A failure's subject that fits processing_failures_key: the value itself when short
    enough, else its start and a digest of the whole, so two long values never share a
    subject and the same value always gets the same one (R17, R23)."""
    if len(value) <= SUBJECT_CHARS:
        return value
    raw = value.encode("utf-8", "surrogatepass")
    suffix = f"…[{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}]"
    return value[: SUBJECT_CHARS - len(suffix)] + suffix


def short_subjects(values: pd.Series) -> pd.Series:
    text = values.astype("string").fillna("")
    long = text.str.len() > SUBJECT_CHARS
    if long.any():
        text = text.copy()
        text[long] = text[long].map(short_subject)
    return text


_KEYS_OF = {
    "attributions": (["job_id", "version_tag", "operation"], "job_operations"),
    "imposition_attributions": (["imposition_id", "operation"], "imposition_operations"),
}


def _unindexable(frame: pd.DataFrame, columns: list[str], table: str) -> tuple[pd.Series, list]:
    """Rows of ``frame`` with a key value too long for an index, and their failures (R20)."""
    bad = pd.Series(False, index=frame.index)
    failures = []
    for column in columns:
        lengths = utf8_lengths(frame[column])
        hit = lengths > MAX_KEY_BYTES
        bad |= hit
        rows = frame[hit]
        if "own" in rows:  # a print row outside the window is only refreshed, never recorded
            rows = rows[rows["own"].astype(bool)]
        if rows.empty:
            continue
        values = rows[column].astype("string")
        found = failure_rows(
            rows,
            "",
            IDENTIFIER_TOO_LONG,
            short_subjects(values),
            column
            + " of "
            + lengths[rows.index].astype("string")
            + f" bytes is longer than the {MAX_KEY_BYTES} an index key of jobstatus holds;"
            f" not attributed (its {table} row is not written), the rest of the row applies",
        ).assign(source_type=rows["source_type"].to_numpy())
        failures.append(found)
    return bad.astype(bool), failures


def guard_plan_keys(plan: UpdatePlan) -> UpdatePlan:
    """R20: one bad row never stops a source. Every attribution whose identifier is too long for
    our btree keys (``MAX_KEY_BYTES``) is dropped from the plan and recorded against its source
    row (IDENTIFIER_TOO_LONG, not retryable); what the row attributes with fine keys still
    applies. A function of each row alone, so the same whatever the windowing (R22, R23)."""
    failures = [plan.failures]
    for name, (columns, table) in _KEYS_OF.items():
        frame = getattr(plan, name)
        if frame.empty:
            continue
        bad, found = _unindexable(frame, columns, table)
        failures.extend(found)
        if bad.any():
            setattr(plan, name, frame[~bad].reset_index(drop=True))
    # Print state follows the job versions' attributions (job ids and tags are bounded by R4).
    state = plan.print_state
    if not state.empty:
        bad = key_too_long(state["job_id"]) | key_too_long(state["version_tag"])
        plan.print_state = state[~bad].reset_index(drop=True)
    jobs = pd.Series(plan.print_jobs, dtype="string")
    plan.print_jobs = jobs[~key_too_long(jobs)].tolist()
    if len(failures) > 1:
        plan.failures = (
            pd.concat([f for f in failures if len(f)] or failures[:1], ignore_index=True)
            .drop_duplicates(["source_type", "source_id", "reason", "subject"])[FAILURE_COLUMNS]
            .reset_index(drop=True)
        )
    return plan
