"""Sensors: launch a run for the next window past the marker, one run per source at a time."""

import json
import time
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from jobstatus_dagster.config import Settings
from jobstatus_dagster.io.sources import Backlog, inspect_backlog
from jobstatus_dagster.io.writer import advance_sweep
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.stale_runs import fail_stale_runs
from jobstatus_dagster.pipeline.windows import IN_FLIGHT, plan_next_run
from jobstatus_dagster.source import source_named


def source_backlog(jobmanager: PostgresDatabase, source_type: str, settings: Settings) -> Backlog:
    """What is there to process. A clean slice of the history sweep is passed over here, so
    the sweep keeps going round while no run is needed (R19 for rows far below the marker)."""
    with jobmanager.engine.connect() as conn:
        backlog = inspect_backlog(
            conn,
            source_type,
            chunk_size=settings.chunk_size,
            lookback=settings.late_row_lookback,
            retry_limit=settings.retry_limit,
            retry_interval=settings.retry_interval_seconds,
            sweep_rows=settings.sweep_rows,
        )
        if backlog.clean_sweep is not None:
            advance_sweep(conn, source_type, backlog.clean_sweep)
            conn.commit()
    return backlog


# The sensor daemon evaluates sensors once per loop of this length: the sensor ticks every loop
# and keeps its own cadence (the interval) in its cursor, so a launch is never a whole interval
# late. Its minimum interval is below the loop: at exactly 5 s, a loop that came round a little
# early skipped the sensor, and ticks came 5 and 10 s apart (bench/latency.py: 7.5-9.5 s).
SENSOR_LOOP_SECONDS = 5
SENSOR_MINIMUM_INTERVAL_SECONDS = 1


@dataclass(frozen=True)
class SensorCadence:
    """The sensor's cursor: the earliest time its next tick may look at the source.

    Ticks before it skip without a query. A tick that finds nothing, or launches the last window
    of a backlog, waits one interval (less half a daemon loop, so ticks stay an interval apart);
    one that launches while rows remain behind its window, or finds a run in flight, leaves it:
    the next tick, one loop later, launches as soon as the source is free (bench/README.md §4).
    """

    next_check: float = 0.0

    @classmethod
    def parse(cls, cursor: str | None) -> "SensorCadence":
        try:
            return cls(float(json.loads(cursor or "{}").get("next_check", 0.0)))
        except (ValueError, TypeError, AttributeError):
            return cls()  # unreadable cursor (older version, hand edit): check now

    @staticmethod
    def after(now: float, interval_seconds: int) -> str:
        wait = max(0.0, interval_seconds - SENSOR_LOOP_SECONDS / 2)
        return json.dumps({"next_check": now + wait})

    @staticmethod
    def now(now: float) -> str:
        return json.dumps({"next_check": now})


def build_source_sensor(
    source_type: str, job: dg.JobDefinition | UnresolvedAssetJobDefinition, interval_seconds: int
) -> dg.SensorDefinition:
    @dg.sensor(
        name=source_named(source_type).sensor_name,
        job=job,
        minimum_interval_seconds=min(SENSOR_MINIMUM_INTERVAL_SECONDS, interval_seconds),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Launches {job.name} for the next window past the {source_type} marker: looks every"
            f" {interval_seconds} s, and straight after each run while a backlog remains."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        jobmanager: PostgresDatabase,
        processing: ProcessingSettings,
    ) -> dg.SensorResult | dg.SkipReason:
        now = time.time()
        due = SensorCadence.parse(context.cursor).next_check
        if now < due:
            return dg.SkipReason(f"next look at the {source_type} source in {due - now:.0f} s")
        settings = processing.resolved()
        # A run whose worker was killed stays in flight forever: fail it, or never launch again.
        stale = fail_stale_runs(context.instance, source_type, settings.stale_run_seconds)
        for run in stale:
            context.log.warning(run.line())
        recovered = "".join(f"{run.line()}; " for run in stale)
        in_flight = context.instance.get_run_records(
            dg.RunsFilter(tags={SOURCE_TAG: source_type}, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SkipReason(
                f"{recovered}run {in_flight[0].dagster_run.run_id} for {source_type}"
                " is still in flight"
            )
        backlog = source_backlog(jobmanager, source_type, settings)
        planned = plan_next_run(source_type, backlog, settings.partition_width, settings.chunk_size)
        if planned is None:
            context.update_cursor(SensorCadence.after(now, interval_seconds))
            return dg.SkipReason(
                f"{recovered}nothing past the {source_type} marker {backlog.marker}"
            )
        # A run key is never reused; a failed window gets a fresh key per attempt.
        attempts = context.instance.get_runs_count(
            dg.RunsFilter(tags={WINDOW_TAG: planned.window_tag})
        )
        run_key = (
            f"{planned.window_tag}#late{backlog.late_rows}"
            f"#retry{backlog.retry_signature}#attempt{attempts}"
        )
        context.log.info(f"launching {planned.window_tag}: {planned.reason}")
        # The marker range becomes a partition the data team can see and backfill.
        partitions = source_named(source_type).partitions
        if not context.instance.has_dynamic_partition(partitions.name, planned.partition_key):
            context.instance.add_dynamic_partitions(partitions.name, [planned.partition_key])
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=run_key,
                    run_config=planned.run_config(),
                    tags=planned.tags("sensor"),
                    partition_key=planned.partition_key,
                )
            ],
            cursor=(
                SensorCadence.now(now)
                if planned.catching_up
                else SensorCadence.after(now, interval_seconds)
            ),
        )

    return _sensor
