"""Retention: the `dagster` database stays flat while the shop runs for years.

Dagster 1.13 keeps every run and its events forever (no run retention: dagster issue #33785).
At a run per sensor interval per source that is over a million runs a year, and the sensors'
per-tick queries over run tags slow as they pile up. An hourly job deletes, through
``instance.delete_run`` (the run, its tags and its event log), successful runs older than
JOBSTATUS_RUN_RETENTION_DAYS and every finished run (failed, canceled, and backfills' runs)
older than JOBSTATUS_FAILED_RUN_RETENTION_DAYS. It reads and writes only Dagster's storage: the
audit trail and every other table of ours are never touched. Ticks are pruned by the daemon
itself (dagster.yaml ``retention:``).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from jobstatus_dagster.pipeline.ops import TRIGGER_TAG

JOB_NAME = "prune_dagster_history"
BACKFILL_TAG = "dagster/backfill"
FINISHED_STATUSES = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]


class RetentionPolicy(dg.ConfigurableResource):
    """How long runs are kept, and how much one pruning run deletes at most (the rest waits for
    the next hour, so a first run over a year of history stays within run monitoring's limit)."""

    run_retention_days: int = 30
    failed_run_retention_days: int = 180
    batch_size: int = 500
    max_deletions_per_run: int = 10_000  # ~0.2 s each (bench/README.md): ~35 min at most


@dataclass
class Pruned:
    successful: int = 0  # successful runs past run_retention_days
    older: int = 0  # any finished run past failed_run_retention_days
    kept_backfill_runs: int = 0  # successful backfill runs between the two limits

    @property
    def deleted(self) -> int:
        return self.successful + self.older


def _delete_matching(
    instance: dg.DagsterInstance,
    runs_filter: dg.RunsFilter,
    keep: set[str],
    batch_size: int,
    budget: int,
) -> tuple[int, int]:
    """Delete the runs of ``runs_filter`` (oldest last in each batch) except those tagged with a
    key of ``keep``; returns (deleted, kept). Paging goes on after the last kept run, which still
    exists, so kept runs are read once."""
    deleted = kept = 0
    cursor: str | None = None
    while deleted < budget:
        records = instance.get_run_records(
            runs_filter, limit=min(batch_size, budget - deleted), cursor=cursor
        )
        if not records:
            break
        for record in records:
            run = record.dagster_run
            if keep & run.tags.keys():
                kept += 1
                cursor = run.run_id
            else:
                instance.delete_run(run.run_id)
                deleted += 1
    return deleted, kept


def prune_runs(
    instance: dg.DagsterInstance, policy: RetentionPolicy, now: datetime | None = None
) -> Pruned:
    """Delete what the policy no longer keeps; reads and writes Dagster's storage only."""
    now = now or datetime.now(UTC)
    pruned = Pruned()
    budget = policy.max_deletions_per_run
    pruned.older, _ = _delete_matching(
        instance,
        dg.RunsFilter(
            statuses=FINISHED_STATUSES,
            updated_before=now - timedelta(days=policy.failed_run_retention_days),
        ),
        set(),
        policy.batch_size,
        budget,
    )
    pruned.successful, pruned.kept_backfill_runs = _delete_matching(
        instance,
        dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.SUCCESS],
            updated_before=now - timedelta(days=policy.run_retention_days),
        ),
        {BACKFILL_TAG},
        policy.batch_size,
        budget - pruned.older,
    )
    return pruned


@dg.op
def prune_old_runs(context: dg.OpExecutionContext, retention: RetentionPolicy) -> None:
    """Deletes the runs the retention settings no longer keep."""
    pruned = prune_runs(context.instance, retention)
    context.log.info(
        f"deleted {pruned.successful} successful run(s) older than"
        f" {retention.run_retention_days} d and {pruned.older} finished run(s) older than"
        f" {retention.failed_run_retention_days} d; kept {pruned.kept_backfill_runs} backfill"
        " run(s)"
    )
    context.add_output_metadata(
        {
            "successful_runs_deleted": pruned.successful,
            "older_runs_deleted": pruned.older,
            "backfill_runs_kept": pruned.kept_backfill_runs,
            "run_retention_days": retention.run_retention_days,
            "failed_run_retention_days": retention.failed_run_retention_days,
            "more_to_delete": pruned.deleted >= retention.max_deletions_per_run,
        }
    )


@dg.job(
    name=JOB_NAME,
    description=(
        "Deletes old runs from Dagster's storage (successful ones after"
        " JOBSTATUS_RUN_RETENTION_DAYS, failed, canceled and backfill runs after"
        " JOBSTATUS_FAILED_RUN_RETENTION_DAYS), so it does not grow for ever. Never touches"
        " the job-status tables or the audit trail."
    ),
    executor_def=dg.in_process_executor,
    tags={TRIGGER_TAG: "retention"},
)
def prune_dagster_history() -> None:
    prune_old_runs()


retention_schedule = dg.ScheduleDefinition(
    name="prune_dagster_history_hourly",
    job=prune_dagster_history,
    cron_schedule="17 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly, so a backlog of old runs is worked off in bounded runs.",
)
