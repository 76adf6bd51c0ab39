"""Sensors: launch a run for the next window past the marker, one run per source at a time."""

from dataclasses import dataclass

import dagster as dg

from jobstatus_dagster.config import Settings
from jobstatus_dagster.io.sources import Backlog, inspect_backlog
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, TRIGGER_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class PlannedRun:
    """The next run of a source: its window and why it runs."""

    source_type: str
    from_marker: int
    to_marker: int
    reason: str

    @property
    def window_tag(self) -> str:
        return f"{self.source_type}:{self.from_marker}-{self.to_marker}"

    def run_config(self) -> dict:
        config = {"from_marker": self.from_marker, "to_marker": self.to_marker}
        return {"ops": {f"load_{self.source_type}_window": {"config": config}}}

    def tags(self, trigger: str) -> dict[str, str]:
        return {SOURCE_TAG: self.source_type, WINDOW_TAG: self.window_tag, TRIGGER_TAG: trigger}


def plan_next_run(source_type: str, backlog: Backlog) -> PlannedRun | None:
    """New rows first; otherwise a run at the marker for late rows (R19) or due retries (R20)."""
    if backlog.next_to is not None:
        return PlannedRun(source_type, backlog.marker, backlog.next_to, "new rows")
    if backlog.late_rows:
        return PlannedRun(
            source_type,
            backlog.marker,
            backlog.marker,
            f"{backlog.late_rows} late rows below the marker",
        )
    if backlog.due_retries:
        return PlannedRun(
            source_type,
            backlog.marker,
            backlog.marker,
            f"{backlog.due_retries} retryable failures due",
        )
    return None


def source_backlog(jobmanager: PostgresDatabase, source_type: str, settings: Settings) -> Backlog:
    with jobmanager.engine.connect() as conn:
        return inspect_backlog(
            conn,
            source_type,
            chunk_size=settings.chunk_size,
            lookback=settings.late_row_lookback,
            retry_limit=settings.retry_limit,
            retry_interval=settings.retry_interval_seconds,
        )


def build_source_sensor(
    source_type: str, job: dg.JobDefinition, interval_seconds: int
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{source_type}_sensor",
        job=job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Launches {job.name} for the next window past the {source_type} marker.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        jobmanager: PostgresDatabase,
        processing: ProcessingSettings,
    ) -> dg.SensorResult | dg.SkipReason:
        in_flight = context.instance.get_run_records(
            dg.RunsFilter(tags={SOURCE_TAG: source_type}, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SkipReason(
                f"run {in_flight[0].dagster_run.run_id} for {source_type} is still in flight"
            )
        backlog = source_backlog(jobmanager, source_type, processing.resolved())
        planned = plan_next_run(source_type, backlog)
        if planned is None:
            return dg.SkipReason(f"nothing past the {source_type} marker {backlog.marker}")
        # A run key is never reused; a failed window gets a fresh key per attempt.
        attempts = context.instance.get_runs_count(
            dg.RunsFilter(tags={WINDOW_TAG: planned.window_tag})
        )
        run_key = (
            f"{planned.window_tag}#late{backlog.late_rows}"
            f"#retry{backlog.retry_signature}#attempt{attempts}"
        )
        context.log.info(f"launching {planned.window_tag}: {planned.reason}")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=run_key,
                    run_config=planned.run_config(),
                    tags=planned.tags("sensor"),
                )
            ]
        )

    return _sensor
