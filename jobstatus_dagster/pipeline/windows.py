"""Planning: which marker windows a source's runs process. Pure: the sensor, the API and the
CLI read the backlog, then ask here what to run."""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice

import dagster as dg

from jobstatus_dagster.core.plan import Position, Sweep
from jobstatus_dagster.io.sources import Backlog
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, SWEEP_TAG, TRIGGER_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.partitions import DEFAULT_WIDTH, bucket_bounds, bucket_key
from jobstatus_dagster.source import source_named

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]
# Markers are bigint: the open end of "everything past the marker".
LAST_MARKER = 2**63 - 1


def sweep_label(sweep: Sweep) -> str:
    """A slice of the history as a person reads it: after (marker, id) through (marker, id)."""

    def place(position: Position | None, default: str) -> str:
        return default if position is None else f"{position[0]}/{position[1]}"

    return f"{place(sweep.start, 'lowest')}..{place(sweep.end, 'marker')}"


@dataclass(frozen=True)
class PlannedRun:
    """The next run of a source: its window, its marker-range partition and why it runs. A run
    may carry the history slice the sensor found never-processed rows in (R19)."""

    source_type: str
    from_marker: int
    to_marker: int
    reason: str
    partition_width: int = DEFAULT_WIDTH
    sweep: Sweep | None = None

    @property
    def window_tag(self) -> str:
        return f"{self.source_type}:{self.from_marker}-{self.to_marker}"

    @property
    def partition_key(self) -> str:
        """The bucket the window ends in (sensor windows never cross a bucket boundary)."""
        return bucket_key(max(self.to_marker, self.from_marker + 1), self.partition_width)

    def run_config(self) -> dict:
        source = source_named(self.source_type)
        config = source.window_run_config(self.from_marker, self.to_marker)
        if self.sweep is not None:
            load = config["ops"][source.graph_name]["ops"][source.load_op_name]
            load["config"]["sweep"] = {
                "after": None if self.sweep.start is None else list(self.sweep.start),
                "through": None if self.sweep.end is None else list(self.sweep.end),
            }
        return config

    def tags(self, trigger: str) -> dict[str, str]:
        tags = {SOURCE_TAG: self.source_type, WINDOW_TAG: self.window_tag, TRIGGER_TAG: trigger}
        if self.sweep is not None:
            tags[SWEEP_TAG] = sweep_label(self.sweep)
        return tags


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
        return PlannedRun(source_type, backlog.marker, to_marker, "new rows", partition_width)
    return _at_the_marker(source_type, backlog, partition_width)


def _at_the_marker(source_type: str, backlog: Backlog, partition_width: int) -> PlannedRun | None:
    """A run with an empty window: what it loads lies below the marker."""
    if backlog.late_rows:
        reason = f"{backlog.late_rows} late rows below the marker"
    elif backlog.due_retries:
        reason = f"{backlog.due_retries} retryable failures due"
    else:
        return None
    return PlannedRun(source_type, backlog.marker, backlog.marker, reason, partition_width)


def backfill_windows(
    chunk_end: Callable[[int, int], tuple[int, int] | None],
    source_type: str,
    from_marker: int,
    to_marker: int,
    partition_width: int,
    reason: str = "backfill",
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
        yield PlannedRun(source_type, lo, hi, reason, partition_width)
        lo = hi


@dataclass(frozen=True)
class InFlight:
    """What the source's queued and running runs already cover: planning starts after them."""

    runs: int = 0
    windows_end: int | None = None  # the highest window end among them
    sweeping: bool = False  # one of them carries a history slice

    @classmethod
    def of(cls, tags: Sequence[dict[str, str]]) -> "InFlight":
        ends = [window_bounds(t[WINDOW_TAG])[1] for t in tags if WINDOW_TAG in t]
        return cls(len(tags), max(ends, default=None), any(SWEEP_TAG in t for t in tags))


def window_bounds(window_tag: str) -> tuple[int, int]:
    """(from, to) of a window tag ``source:from-to`` (markers may be negative)."""
    bounds = window_tag.rsplit(":", 1)[1]
    split = bounds.index("-", 1)
    return int(bounds[:split]), int(bounds[split + 1 :])


def plan_sensor_runs(
    source_type: str,
    backlog: Backlog,
    chunk_end: Callable[[int, int], tuple[int, int] | None],
    in_flight: InFlight,
    windows_per_tick: int,
    partition_width: int,
) -> list[PlannedRun]:
    """One tick's runs: consecutive windows of new rows after the marker and after every window
    already queued or running, so that at most ``windows_per_tick`` runs of the source wait at
    once and no window is requested twice while its run waits (the queue runs them one at a time,
    in order). With no new rows and nothing in flight: one run at the marker for late rows or due
    retries. A history slice holding never-processed rows (R19) rides on the first run, unless a
    waiting run already carries one."""
    room = max(0, windows_per_tick - in_flight.runs)
    start = max(backlog.marker, in_flight.windows_end or backlog.marker)
    windows = backfill_windows(
        chunk_end, source_type, start, LAST_MARKER, partition_width, reason="new rows"
    )
    runs = list(islice(windows, room))
    if room and not runs and in_flight.windows_end is None:
        at_marker = _at_the_marker(source_type, backlog, partition_width)
        runs = [] if at_marker is None else [at_marker]
    if runs and backlog.swept_rows and not in_flight.sweeping:
        runs[0] = replace(runs[0], sweep=backlog.sweep)
    return runs
