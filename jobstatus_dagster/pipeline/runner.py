"""Processing in this process, for a shell whose Dagster instance no daemon serves (`jobstatus
process` and `jobstatus backfill` then): without a daemon the run queue never dequeues, so the
windows run here with `execute_in_process`, as runs in the instance's history, one after the
other. With a daemon, the CLI and the API submit to the queue instead (pipeline/queue.py)."""

from dataclasses import dataclass, field

import dagster as dg

from jobstatus_dagster.io.sources import chunk_reader, source_backlog
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.stale_runs import worker_tags
from jobstatus_dagster.pipeline.windows import PlannedRun, backfill_windows, plan_next_run
from jobstatus_dagster.source import source_named


@dataclass
class RunOutcome:
    run_id: str
    window: str
    success: bool
    summary: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class SourceOutcome:
    """All runs one request made for one source."""

    source_type: str
    runs: list[RunOutcome] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(run.success for run in self.runs)

    def total(self, key: str) -> int:
        return sum(int(run.summary.get(key, 0)) for run in self.runs)

    def line(self) -> str:
        if not self.runs:
            return f"{self.source_type}: nothing new"
        failed = [run for run in self.runs if not run.success]
        text = (
            f"{self.source_type}: {len(self.runs)} run(s), {self.total('rows_read')} rows read, "
            f"{self.total('jobs_updated')} jobs updated, {self.total('audit_rows_written')} audit "
            f"rows, {self.total('failures_recorded')} failures recorded, marker "
            f"{self.runs[-1].summary.get('marker_after', '?')}"
        )
        if failed:
            text += f"; FAILED {failed[0].window} in run {failed[0].run_id}: {failed[0].error}"
        return text


def execute_window(
    job: dg.JobDefinition, instance: dg.DagsterInstance, planned: PlannedRun, trigger: str
) -> RunOutcome:
    partitions = source_named(planned.source_type).partitions
    if not instance.has_dynamic_partition(partitions.name, planned.partition_key):
        instance.add_dynamic_partitions(partitions.name, [planned.partition_key])
    result = job.execute_in_process(
        run_config=planned.run_config(),
        instance=instance,
        tags={**planned.tags(trigger), **worker_tags()},  # so a killed process is seen as gone
        partition_key=planned.partition_key,
        raise_on_error=False,
    )
    if result.success:
        graph = source_named(planned.source_type).graph_name
        return RunOutcome(result.run_id, planned.window_tag, True, result.output_for_node(graph))
    failure = next(
        (e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE), None
    )
    error = failure.event_specific_data.error.message.strip() if failure else "run failed"
    return RunOutcome(result.run_id, planned.window_tag, False, {}, error)


def process_source(
    defs: dg.Definitions, instance: dg.DagsterInstance, source_type: str, trigger: str = "cli"
) -> SourceOutcome:
    """One run per window until nothing is past the marker, plus at most one run for late rows
    and due retries; stops at the first failed run (the marker stays before it)."""
    job = defs.resolve_job_def(source_named(source_type).job_name)
    jobmanager: PostgresDatabase = defs.resources["jobmanager"]
    processing: ProcessingSettings = defs.resources["processing"]
    settings = processing.resolved()
    outcome = SourceOutcome(source_type)
    swept_below_marker = False
    while True:
        backlog = source_backlog(jobmanager.engine, source_type, settings)
        planned = plan_next_run(source_type, backlog, settings.partition_width, settings.chunk_size)
        if planned is None:
            break
        if planned.from_marker == planned.to_marker:
            if swept_below_marker:
                break
            swept_below_marker = True
        run = execute_window(job, instance, planned, trigger)
        outcome.runs.append(run)
        if not run.success:
            break
    return outcome


def backfill(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    source_type: str,
    from_marker: int,
    to_marker: int,
    trigger: str = "backfill",
) -> SourceOutcome:
    """R21: re-process the rows in (from_marker, to_marker], window by window; idempotent, and
    the marker never moves backwards. Stops at the first failed window."""
    job = defs.resolve_job_def(source_named(source_type).job_name)
    jobmanager: PostgresDatabase = defs.resources["jobmanager"]
    settings = defs.resources["processing"].resolved()
    outcome = SourceOutcome(source_type)
    windows = backfill_windows(
        chunk_reader(jobmanager.engine, source_type, settings.chunk_size),
        source_type,
        from_marker,
        to_marker,
        settings.partition_width,
    )
    for planned in windows:
        run = execute_window(job, instance, planned, trigger)
        outcome.runs.append(run)
        if not run.success:
            break
    return outcome
