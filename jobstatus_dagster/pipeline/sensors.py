"""Sensors: one look at a source per tick, answered with one SensorResult.

A tick only reads (the shop's database and the run history) and returns the runs to queue, the
marker-range partitions they need, a cursor a person can read and, when nothing is due, why.
Catching up is several consecutive windows requested in one tick; the run queue's
one-run-per-source limit runs them one after the other (bench/README.md, issue 13).
"""

import json
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.plan import Position
from jobstatus_dagster.io.sources import Backlog, inspect_backlog, next_chunk
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.queue import PLAN_TRY_LOCK_SQL, plan_lock_name
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.stale_runs import (
    fail_stalled_runs,
    fail_stalled_runs_request,
    stalled_runs,
)
from jobstatus_dagster.pipeline.windows import (
    FINISHED,
    IN_FLIGHT,
    InFlight,
    PlannedRun,
    plan_sensor_runs,
)
from jobstatus_dagster.source import source_named

# At most this many runs of a source wait in the queue at once: enough to drain a backlog at the
# queue's pace between two looks, few enough that a re-plan after a failure redoes little.
WINDOWS_PER_TICK = 10


@dataclass(frozen=True)
class SensorCursor:
    """What the sensor saw at its last look, as the UI shows it. Only ``sweep_after`` steers the
    next look (where its walk through the history goes on); what is unprocessed is always read
    from the database, never from here."""

    marker_seen: int | None = None
    looked_at: str | None = None  # UTC, ISO 8601
    requested_up_to: int | None = None  # the highest window end queued or running
    waiting_runs: int = 0  # runs of the source queued or running after this look
    sweep_after: list[int] | None = None  # (marker, id) the history walk goes on after
    # The backlog's state last shown on the source table's asset (``backlog_state``).
    observed: dict[str, int] | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> "SensorCursor":
        """An unreadable cursor (an older version's, a hand edit) counts as none."""
        try:
            data = json.loads(cursor or "{}")
            sweep = data.get("sweep_after")
            return cls(
                marker_seen=_opt_int(data.get("marker_seen")),
                looked_at=data.get("looked_at"),
                requested_up_to=_opt_int(data.get("requested_up_to")),
                waiting_runs=int(data.get("waiting_runs", 0)),
                sweep_after=None if sweep is None else [int(sweep[0]), int(sweep[1])],
                observed=_observed(data.get("observed")),
            )
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            return cls()

    @property
    def sweep_position(self) -> Position | None:
        return None if self.sweep_after is None else (self.sweep_after[0], self.sweep_after[1])

    def dumps(self) -> str:
        return json.dumps(asdict(self))


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _observed(value: object) -> dict[str, int] | None:
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else None


BEHIND = ("caught up", "less than one window behind", "one window or more behind")


def backlog_state(backlog: Backlog, chunk_size: int, partition_width: int) -> dict[str, int]:
    """The backlog in coarse terms, compared from look to look: how far behind (by class, not by
    row), whether late rows or due retries wait, and which marker range the marker is in. In a
    working shop the exact figures change at nearly every look; these change a few times a day,
    so the observations they trigger stay few (a runless event is never deleted with a run)."""
    rows = backlog.next_rows
    return {
        "behind": 0 if rows == 0 else 1 if rows < chunk_size else 2,
        "late_rows": int(backlog.late_rows > 0),
        "retries_due": int(backlog.due_retries > 0),
        "marker_range": backlog.marker // partition_width,
    }


def backlog_observation(
    source_type: str,
    backlog: Backlog,
    chunk_size: int,
    state: dict[str, int],
    previous: dict[str, int] | None,
) -> list[dg.AssetObservation]:
    """An observation of the source table, with the exact figures, when its backlog's state
    differs from the one last shown; none otherwise, so a quiet shop's looks add nothing."""
    if state == previous:
        return []
    table = dg.AssetKey(list(source_named(source_type).table_path))
    metadata = {
        "backlog": BEHIND[state["behind"]],
        "marker": backlog.marker,
        # Counted up to one window (a cheap look): "at least" once it reaches chunk_size.
        "rows_past_marker": backlog.next_rows,
        "rows_past_marker_counted_up_to": chunk_size,
        "late_rows_below_marker": backlog.late_rows,
        "failures_due_for_retry": backlog.due_retries,
    }
    return [dg.AssetObservation(asset_key=table, metadata=metadata)]


def _run_key(planned: PlannedRun, finished: int) -> str:
    """Stable while the window's run waits or runs (the daemon then drops a repeat); a fresh
    key once a run of it has finished, so a failed window is requested again."""
    return f"{planned.window_tag}#{finished}"


def look(
    context: dg.SensorEvaluationContext,
    source_type: str,
    job_name: str,
    jobmanager: PostgresDatabase,
    settings: Settings,
) -> dg.SensorResult:
    """One tick: read the source and the runs in flight, plan, answer."""
    now = datetime.now(UTC)
    cursor = SensorCursor.parse(context.cursor)
    instance = context.instance
    # The source's planning lock is held from reading the runs in flight to the end of the plan,
    # as a processing request holds it (queue.planning), so the two never plan the same window.
    # It is taken on a connection of its own: the snapshot below must be taken after the runs in
    # flight are read (a run that finished in between would otherwise be neither in flight nor
    # past the snapshot's marker, and its window planned again).
    with jobmanager.engine.connect() as lock_conn:
        if not lock_conn.scalar(PLAN_TRY_LOCK_SQL, {"name": plan_lock_name(source_type)}):
            return dg.SensorResult(
                skip_reason=f"a processing request is planning {source_type} now; next tick",
                cursor=context.cursor,
            )
        waiting = [
            record.dagster_run.tags
            for record in instance.get_run_records(
                dg.RunsFilter(tags={SOURCE_TAG: source_type}, statuses=IN_FLIGHT)
            )
        ]
        in_flight = InFlight.of(waiting)
        # One snapshot for the whole look: rows committed meanwhile wait for the next one,
        # instead of making a tiny extra window of their own; read-only, so a tick can never
        # write.
        with jobmanager.engine.connect().execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        ) as conn:
            backlog = inspect_backlog(conn, source_type, settings, cursor.sweep_position)
            planned = plan_sensor_runs(
                source_type,
                backlog,
                lambda lo, hi: next_chunk(conn, source_type, lo, hi, settings.chunk_size),
                in_flight,
                WINDOWS_PER_TICK,
                settings.partition_width,
            )
    stalled = stalled_runs(instance, source_type, settings.stale_run_seconds)
    finished = (
        Counter(
            record.dagster_run.tags[WINDOW_TAG]
            for record in instance.get_run_records(
                dg.RunsFilter(tags={WINDOW_TAG: [p.window_tag for p in planned]}, statuses=FINISHED)
            )
        )
        if planned
        else Counter()
    )
    requests = [
        dg.RunRequest(
            run_key=_run_key(p, finished[p.window_tag]),
            job_name=job_name,
            run_config=p.run_config(),
            tags=p.tags("sensor"),
            partition_key=p.partition_key,
        )
        for p in planned
    ]
    for p in planned:
        context.log.info(f"requesting {p.window_tag}: {p.reason}")
    if stalled:
        for record, reason in stalled:
            context.log.warning(f"run {record.dagster_run.run_id}: worker gone ({reason})")
        requests.append(fail_stalled_runs_request(instance, source_type, stalled))
    # A slice holding never-processed rows is looked at again until a run has processed them.
    sweep_after = backlog.sweep.start if backlog.swept_rows else backlog.sweep.end
    ends = [p.to_marker for p in planned] + [in_flight.windows_end or backlog.marker]
    state = backlog_state(backlog, settings.chunk_size, settings.partition_width)
    observations = backlog_observation(
        source_type, backlog, settings.chunk_size, state, cursor.observed
    )
    cursor = SensorCursor(
        marker_seen=backlog.marker,
        looked_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        requested_up_to=max(ends),
        waiting_runs=in_flight.runs + len(planned),
        sweep_after=None if sweep_after is None else list(sweep_after),
        observed=state,
    )
    if not requests:
        return dg.SensorResult(
            skip_reason=_nothing_to_do(source_type, backlog, in_flight),
            cursor=cursor.dumps(),
            asset_events=observations,
        )
    partitions = source_named(source_type).partitions
    keys = sorted({p.partition_key for p in planned})
    new_keys = [k for k in keys if not instance.has_dynamic_partition(partitions.name, k)]
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor.dumps(),
        dynamic_partitions_requests=[partitions.build_add_request(new_keys)] if new_keys else [],
        asset_events=observations,
    )


def _nothing_to_do(source_type: str, backlog: Backlog, in_flight: InFlight) -> str:
    if in_flight.runs:
        return (
            f"{in_flight.runs} run(s) for {source_type} already queued or running, up to"
            f" marker {in_flight.windows_end or backlog.marker}"
        )
    return f"nothing past the {source_type} marker {backlog.marker}"


def build_source_sensor(
    source_type: str, job: dg.JobDefinition | UnresolvedAssetJobDefinition, interval_seconds: int
) -> dg.SensorDefinition:
    rows = source_named(source_type).rows_label

    @dg.sensor(
        name=source_named(source_type).sensor_name,
        jobs=[job, fail_stalled_runs],
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {interval_seconds} s, looks for {rows} not yet processed and queues a run for"
            f" each range of them (up to {WINDOWS_PER_TICK} at a time; they run one after the"
            " other). Also walks through older ones a slice at a time, so one that was saved"
            " late is still processed."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        jobmanager: PostgresDatabase,
        processing: ProcessingSettings,
    ) -> dg.SensorResult:
        return look(context, source_type, job.name, jobmanager, processing.resolved())

    return _sensor
