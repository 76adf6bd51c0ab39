"""Planning: which marker windows a source's runs process. Pure: the sensor, the API and the
CLI read the backlog, then ask here what to run."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dagster as dg

from jobstatus_dagster.io.sources import Backlog
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, TRIGGER_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.partitions import DEFAULT_WIDTH, bucket_bounds, bucket_key
from jobstatus_dagster.source import source_named

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class PlannedRun:
    """The next run of a source: its window, its marker-range partition and why it runs."""

    source_type: str
    from_marker: int
    to_marker: int
    reason: str
    partition_width: int = DEFAULT_WIDTH
    catching_up: bool = False  # rows remain past this window: the next one is due at once

    @property
    def window_tag(self) -> str:
        return f"{self.source_type}:{self.from_marker}-{self.to_marker}"

    @property
    def partition_key(self) -> str:
        """The bucket the window ends in (sensor windows never cross a bucket boundary)."""
        return bucket_key(max(self.to_marker, self.from_marker + 1), self.partition_width)

    def run_config(self) -> dict:
        return source_named(self.source_type).window_run_config(self.from_marker, self.to_marker)

    def tags(self, trigger: str) -> dict[str, str]:
        return {SOURCE_TAG: self.source_type, WINDOW_TAG: self.window_tag, TRIGGER_TAG: trigger}


def plan_next_run(
    source_type: str,
    backlog: Backlog,
    partition_width: int,
    chunk_size: int,
) -> PlannedRun | None:
    """New rows first (up to the end of the first row's bucket); otherwise a run at the marker
    for late rows (R19) or due retries (R20)."""
    if backlog.next_to is not None and backlog.next_from is not None:
        _, bucket_end = bucket_bounds(backlog.next_from, partition_width)
        to_marker = min(backlog.next_to, bucket_end)
        catching_up = to_marker < backlog.next_to or backlog.next_rows >= chunk_size
        return PlannedRun(
            source_type, backlog.marker, to_marker, "new rows", partition_width, catching_up
        )
    if backlog.late_rows:
        return PlannedRun(
            source_type,
            backlog.marker,
            backlog.marker,
            f"{backlog.late_rows} late rows below the marker",
            partition_width,
        )
    if backlog.due_retries:
        return PlannedRun(
            source_type,
            backlog.marker,
            backlog.marker,
            f"{backlog.due_retries} retryable failures due",
            partition_width,
        )
    return None


def backfill_windows(
    chunk_end: Callable[[int, int], tuple[int, int] | None],
    source_type: str,
    from_marker: int,
    to_marker: int,
    partition_width: int,
) -> Iterator[PlannedRun]:
    """Windows over the rows in (from_marker, to_marker], shaped like the sensor's: at most one
    chunk of rows (more only when one marker value repeats), never past the marker-range
    partition of their first row; empty marker ranges are skipped, not run. ``chunk_end(lo, hi)``
    gives the first and last marker of the next chunk of rows in (lo, hi], or None."""
    lo = from_marker
    while (chunk := chunk_end(lo, to_marker)) is not None:
        first, last = chunk
        _, partition_end = bucket_bounds(first, partition_width)
        hi = min(last, partition_end)
        yield PlannedRun(source_type, lo, hi, "backfill", partition_width)
        lo = hi
