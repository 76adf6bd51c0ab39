"""Marker-range partitions: fixed-width buckets of source markers, so the data team can pick
ranges in the UI and backfill them (R21). A key names its range: ``000000010000-000000020000``
is markers (10000, 20000]. Each source's partitions definition is ``Source.partitions``."""

import re

DEFAULT_WIDTH = 10_000


def bucket_bounds(marker: int, width: int = DEFAULT_WIDTH) -> tuple[int, int]:
    """The bucket (lo, hi] holding ``marker``."""
    lo = ((marker - 1) // width) * width
    return lo, lo + width


def bucket_key(marker: int, width: int = DEFAULT_WIDTH) -> str:
    lo, hi = bucket_bounds(marker, width)
    return f"{lo:012d}-{hi:012d}"


_KEY = re.compile(r"^(-?[0-9]+)-(-?[0-9]+)$")


def key_bounds(key: str) -> tuple[int, int]:
    """(lo, hi] of a partition key; the key itself carries its range, whatever the width."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"not a marker-range partition key: {key!r}")
    return int(match[1]), int(match[2])


def keys_between(from_marker: int, to_marker: int, width: int = DEFAULT_WIDTH) -> list[str]:
    """Every bucket key overlapping (from_marker, to_marker]."""
    if to_marker <= from_marker:
        return [bucket_key(to_marker, width)]
    first, _ = bucket_bounds(from_marker + 1, width)
    return [bucket_key(lo + 1, width) for lo in range(first, to_marker, width)]
