"""Failing runs whose worker is gone, so a killed process never blocks its source forever.

A run whose process was SIGKILLed (a ``jobstatus process`` or ``jobstatus backfill`` running it
in-process because no daemon serves the instance, or a daemon-launched run worker whose code
server died too) stays NOT_STARTED/STARTING/STARTED: the source's concurrency pool (one run at a
time, ``dagster.yaml``) holds every later run of the source in the queue behind it, for good.
Dagster's run monitoring (``dagster.yaml``) cannot see it: it asks the run launcher whether a
worker is healthy, the DefaultRunLauncher has no such check (``supports_check_run_worker_health``
is False), and a run executed in-process by the CLI has no launcher at all. (The API does not run
anything itself: it puts runs into the queue, which the daemon launches.) Re-running a failed
run's window is safe (R18), and the marker row lock still serializes the writes (R19).

Who fails them: the source's sensor only reads (``stalled_runs``) and, when it finds one,
requests a run of the ``fail_stalled_runs`` job (in the UI, beside the processing jobs), which
fails them; nothing else does.

A run's worker is gone when either

- the run was started in-process by ``runner`` on this host (tags ``jobstatus/host`` and
  ``jobstatus/pid``, confirmed by the pid Dagster records in the run's engine events) and that
  process no longer exists, has exited, or its pid now belongs to a younger process; or
- no process is known to be alive for it and it has recorded no event for
  ``JOBSTATUS_STALE_RUN_SECONDS`` (runs take seconds; the default is 600).

A run whose process is known to be alive is never failed here: a hung but live worker is run
monitoring's ``max_runtime_seconds``. QUEUED runs have no worker and are left to the run queue.
"""

import os
import socket
import time
from dataclasses import dataclass

import dagster as dg

from jobstatus_dagster.pipeline.ops import SOURCE_TAG, TRIGGER_TAG
from jobstatus_dagster.pipeline.resources import ProcessingSettings
from jobstatus_dagster.processes import ProcessState, process_state

HOST_TAG = "jobstatus/host"
PID_TAG = "jobstatus/pid"

# Statuses in which a worker process is (or should be) running the run.
WORKER_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
ENGINE_EVENTS_SCANNED = 50


def worker_tags() -> dict[str, str]:
    """Tags naming the process that executes a run in-process (set by the runner)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


@dataclass(frozen=True)
class StaleRun:
    """A run failed because its worker is gone."""

    run_id: str
    source_type: str
    status: dg.DagsterRunStatus
    reason: str

    @property
    def message(self) -> str:
        return f"run worker gone: {self.reason}"

    def line(self) -> str:
        return f"marked run {self.run_id} ({self.status.value}) failed: {self.message}"


def _event_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid Dagster recorded for the run's process (its executor's or launcher's engine event)."""
    records = instance.get_records_for_run(
        run_id,
        of_type=dg.DagsterEventType.ENGINE_EVENT,
        limit=ENGINE_EVENTS_SCANNED,
        ascending=False,
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event is not None else None
        if data is not None and "pid" in data.metadata:
            return _as_int(data.metadata["pid"].value)
    return None


def _as_int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _tagged_worker(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[str, int] | None:
    """(host, pid) of the run's own process, or None when unknown. A re-execution inherits its
    parent's tags, so the tags count only when Dagster's recorded pid agrees with them."""
    host, pid = run.tags.get(HOST_TAG), _as_int(run.tags.get(PID_TAG, ""))
    if host is None or pid is None:
        return None
    recorded = _event_pid(instance, run.run_id)
    if recorded is not None and recorded != pid:
        return None
    if recorded is None and run.parent_run_id is not None:
        return None
    return host, pid


def last_activity(instance: dg.DagsterInstance, record: dg.RunRecord) -> float:
    """When the run last recorded anything: its newest event, else its last status change."""
    latest = instance.get_records_for_run(record.dagster_run.run_id, limit=1, ascending=False)
    times = [record.update_timestamp.timestamp(), record.create_timestamp.timestamp()]
    times += [r.event_log_entry.timestamp for r in latest.records]
    return max(times)


def worker_gone(
    instance: dg.DagsterInstance, record: dg.RunRecord, stale_after_seconds: int
) -> str | None:
    """Why the run's worker is gone, or None while it may still be running."""
    run = record.dagster_run
    worker = _tagged_worker(instance, run)
    if worker is not None and worker[0] == socket.gethostname():
        host, pid = worker
        state = process_state(pid, running_at=record.create_timestamp.timestamp())
        if state is ProcessState.ALIVE:
            return None
        if state is not ProcessState.UNKNOWN:
            return f"process {pid} on {host} {state.value}"
    quiet = time.time() - last_activity(instance, record)
    if quiet > stale_after_seconds:
        where = f" (process {worker[1]} on {worker[0]})" if worker else ""
        return (
            f"no event for {quiet:.0f} s in {run.status.value}{where}, past"
            f" JOBSTATUS_STALE_RUN_SECONDS={stale_after_seconds}"
        )
    return None


def stalled_runs(
    instance: dg.DagsterInstance, source_type: str, stale_after_seconds: int
) -> list[tuple[dg.RunRecord, str]]:
    """The source's runs whose worker is gone, with why. Reads only."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={SOURCE_TAG: source_type}, statuses=WORKER_STATUSES)
    )
    found = [(record, worker_gone(instance, record, stale_after_seconds)) for record in records]
    return [(record, reason) for record, reason in found if reason is not None]


def fail_stale_runs(
    instance: dg.DagsterInstance, source_type: str, stale_after_seconds: int
) -> list[StaleRun]:
    """Mark every run of the source whose worker is gone as failed; return what was failed."""
    failed: list[StaleRun] = []
    for record, reason in stalled_runs(instance, source_type, stale_after_seconds):
        current = instance.get_run_by_id(record.dagster_run.run_id)
        if current is None or current.is_finished:  # it finished (or was failed) meanwhile
            continue
        stale = StaleRun(current.run_id, source_type, current.status, reason)
        instance.report_run_failed(current, stale.message)
        failed.append(stale)
    return failed


class StalledRunsConfig(dg.Config):
    source_type: str


@dg.op
def fail_stalled_runs_op(
    context: dg.OpExecutionContext, config: StalledRunsConfig, processing: ProcessingSettings
) -> None:
    """Fails the source's runs whose worker is gone, so the queue runs what waits behind them."""
    settings = processing.resolved()
    failed = fail_stale_runs(context.instance, config.source_type, settings.stale_run_seconds)
    for run in failed:
        context.log.warning(run.line())
    context.add_output_metadata({"runs_failed": len(failed)})


@dg.job(
    name="fail_stalled_runs",
    description=(
        "Marks runs as failed whose process has died (a killed command or server), so the"
        " source's waiting runs can go ahead. Requested by a source's sensor when it sees one."
    ),
    executor_def=dg.in_process_executor,
)
def fail_stalled_runs() -> None:
    fail_stalled_runs_op()


def fail_stalled_runs_request(
    instance: dg.DagsterInstance, source_type: str, stalled: list[tuple[dg.RunRecord, str]]
) -> dg.RunRequest:
    """One request per set of stalled runs; the key changes once they record anything new."""
    key = ",".join(
        f"{record.dagster_run.run_id}@{last_activity(instance, record):.0f}"
        for record, _ in stalled
    )
    return dg.RunRequest(
        run_key=f"fail stalled {source_type}: {key}",
        job_name=fail_stalled_runs.name,
        run_config={"ops": {"fail_stalled_runs_op": {"config": {"source_type": source_type}}}},
        tags={TRIGGER_TAG: "sensor"},
    )
