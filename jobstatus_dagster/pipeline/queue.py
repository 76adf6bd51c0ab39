"""Work handed to Dagster: windows as runs in the instance's run queue, marker ranges as partition
backfills. The queue's one-run-per-source pool, run monitoring and the run history then apply to
every run alike, whoever asked for it (sensor, asset page, API, CLI); this module only plans what
to ask for, asks, and reads the answers back from the event log."""

from __future__ import annotations

import secrets
import string
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio
import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.io.sources import (
    chunk_reader,
    engine_marker_bounds,
    marker_buckets,
    source_backlog,
)
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, TRIGGER_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.partitions import bucket_key, key_bounds
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.windows import (
    FINISHED,
    IN_FLIGHT,
    InFlight,
    PlannedRun,
    plan_sensor_runs,
)
from jobstatus_dagster.source import SOURCE_NAMES, source_named

# workspace.yaml's code location: the daemon launches queued runs from it.
LOCATION_NAME = "jobstatus"
DEFINITIONS_MODULE = "jobstatus_dagster.definitions"
PARTITION_TAG = "dagster/partition"
BACKFILL_TAG = "dagster/backfill"
RUN_QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
BACKFILL_DAEMON = "BACKFILL"
# Daemons write a heartbeat every 30 s; two missed beats and it is taken as not running.
HEARTBEAT_FRESH_SECONDS = 75
POLL_SECONDS = 0.25


def daemon_serves(instance: dg.DagsterInstance, daemon_type: str = RUN_QUEUE_DAEMON) -> bool:
    """Whether a `dagster-daemon` (or `dagster dev`) is serving this instance now: without one,
    queued runs and backfills wait until one starts."""
    heartbeat = instance.get_daemon_heartbeats().get(daemon_type)
    return heartbeat is not None and time.time() - heartbeat.timestamp < HEARTBEAT_FRESH_SECONDS


def ensure_pools(instance: dg.DagsterInstance) -> None:
    """Create each source's concurrency pool at dagster.yaml's default limit (one run) before the
    first run needs it. The daemon would create it on first use, but in that same pass it does not
    yet count it, so the first two runs of a fresh instance could start together."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    with _POOLS_LOCK:  # concurrent requests of one API process: one creates, the others see it
        missing = set(SOURCE_NAMES) - storage.get_concurrency_keys()
        for pool in sorted(missing):
            try:
                storage.initialize_concurrency_limit_to_default(pool)
            except sa.exc.DBAPIError:
                # Another process (CLI, daemon) created it meanwhile: it exists, as wanted. The
                # storage's own fallback then runs in the failed transaction (InFailedSqlTransaction
                # rather than IntegrityError), hence the wider class, then a fresh look.
                if pool not in storage.get_concurrency_keys():
                    raise


_POOLS_LOCK = threading.Lock()


def _job_origins(job_name: str):
    """Where the daemon finds ``job_name``: workspace.yaml's code location. Dagster's own callers
    (the webserver, `dagster job launch`) read these off a loaded workspace, at the cost of a code
    server process per caller; the location is known, so it is named here. Dagster has no public
    constructor for them: the internal classes stay in this one function."""
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE)
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, LOCATION_NAME)
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)
    pointer = ModuleCodePointer(DEFINITIONS_MODULE, "defs", None)
    python = JobPythonOrigin(job_name, RepositoryPythonOrigin(sys.executable, pointer))
    return remote, python


def submit_run(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    *,
    run_config: dict,
    tags: dict[str, str],
    partition_key: str,
    partitions: dg.DynamicPartitionsDefinition,
) -> str:
    """Queue one run of ``job`` for one marker-range partition; returns its run id."""
    if not instance.has_dynamic_partition(partitions.name, partition_key):
        instance.add_dynamic_partitions(partitions.name, [partition_key])
    remote, python = _job_origins(job.name)
    run = instance.create_run_for_job(
        job,
        run_config=run_config,
        tags={**job.tags, **tags, PARTITION_TAG: partition_key},
        status=dg.DagsterRunStatus.NOT_STARTED,
        remote_job_origin=remote,
        job_code_origin=python,
    )
    instance.submit_run(run.run_id, workspace=None)  # the run queue needs no workspace to enqueue
    return run.run_id


def runs_in_flight(instance: dg.DagsterInstance, source_type: str) -> list[dg.DagsterRun]:
    """The source's runs queued or running now, whoever asked for them, oldest first."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={SOURCE_TAG: source_type}, statuses=IN_FLIGHT)
    )
    return [record.dagster_run for record in reversed(records)]  # records come newest first


def plan_source(defs: dg.Definitions, source_type: str, in_flight: InFlight) -> list[PlannedRun]:
    """The windows the sensor would request for everything past the marker and past the runs
    already queued or running, all of them (the sensor caps a tick's; a request wants the whole
    backlog): consecutive windows of new rows, or one run at the marker for late rows and due
    retries."""
    jobmanager: PostgresDatabase = defs.resources["jobmanager"]
    processing: ProcessingSettings = defs.resources["processing"]
    settings = processing.resolved()
    backlog = source_backlog(jobmanager.engine, source_type, settings)
    return plan_sensor_runs(
        source_type,
        backlog,
        chunk_reader(jobmanager.engine, source_type, settings.chunk_size),
        in_flight,
        sys.maxsize,
        settings.partition_width,
    )


@dataclass(frozen=True)
class Submitted:
    """What one request put into the queue for one source."""

    source_type: str
    run_ids: list[str] = field(default_factory=list)
    windows: dict[str, str] = field(default_factory=dict)  # run id → window
    backfill_id: str | None = None


def submit_source(
    defs: dg.Definitions, instance: dg.DagsterInstance, source_type: str, trigger: str
) -> Submitted:
    """Queue a run per window past the marker and the runs in flight. Consecutive windows may wait in the queue
    together: the pool runs them one at a time, and a window whose predecessor failed still
    writes, but never moves the marker past the failed one."""
    source = source_named(source_type)
    job = defs.resolve_job_def(source.job_name)
    submitted = Submitted(source_type)
    # Runs already waiting (the sensor's, another request's) are this request's too: waited
    # for, not queued again.
    waiting = runs_in_flight(instance, source_type)
    for run in waiting:
        submitted.run_ids.append(run.run_id)
        submitted.windows[run.run_id] = run_window(run)
    in_flight = InFlight.of([run.tags for run in waiting])
    for planned in plan_source(defs, source_type, in_flight):
        run_id = submit_run(
            instance,
            job,
            run_config=planned.run_config(),
            tags=planned.tags(trigger),
            partition_key=planned.partition_key,
            partitions=source.partitions,
        )
        submitted.run_ids.append(run_id)
        submitted.windows[run_id] = planned.window_tag
    return submitted


def submit_backfill(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    source_type: str,
    from_marker: int,
    to_marker: int,
    trigger: str,
) -> tuple[str | None, list[str]]:
    """A partition backfill of the processing asset over every marker range holding rows in
    (from_marker, to_marker], as the asset page's "Backfill" makes it; returns its id and its
    ranges (None and none when no row lies there). Each range runs whole: re-processing is idempotent and never lowers the marker."""
    from dagster._core.execution.backfill import PartitionBackfill

    width = defs.resources["processing"].resolved().partition_width
    buckets = marker_buckets(
        defs.resources["jobmanager"].engine, source_type, from_marker, to_marker, width
    )
    keys = [bucket_key(lo + 1, width) for lo in buckets]  # ranges without rows are not run
    if not keys:
        return None, []
    source = source_named(source_type)
    partitions = source.partitions
    missing = [k for k in keys if not instance.has_dynamic_partition(partitions.name, k)]
    if missing:
        instance.add_dynamic_partitions(partitions.name, missing)
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=new_backfill_id(),
        asset_graph=defs.resolve_asset_graph(),
        partition_names=keys,
        asset_selection=[source.processing_key],
        backfill_timestamp=time.time(),
        tags={SOURCE_TAG: source_type, TRIGGER_TAG: trigger},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"{source_type} markers ({from_marker}, {to_marker}]",
        description=f"Re-process the {source_type} rows in markers ({from_marker}, {to_marker}].",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id, keys


def new_backfill_id() -> str:
    """Eight lower-case letters like Dagster's own ids, but drawn from `secrets`: Dagster's draws
    from the global `random`, which a seeded library (hypothesis) makes repeat."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(8))


def whole_source_bounds(defs: dg.Definitions, source_type: str) -> tuple[int, int] | None:
    """(from, to] covering every row of the source, or None when it has none."""
    lowest, highest = engine_marker_bounds(defs.resources["jobmanager"].engine, source_type)
    if lowest is None or highest is None:
        return None
    return min(0, lowest - 1), highest


def runs_settled(
    instance: dg.DagsterInstance, run_ids: Sequence[str]
) -> tuple[bool, list[dg.DagsterRun]]:
    """(all finished, the runs as they are now): one look, no waiting."""
    runs = [instance.get_run_by_id(run_id) for run_id in run_ids]
    found = [run for run in runs if run is not None]
    return all(run.status in FINISHED for run in found), found


def backfill_runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.DagsterRun]:
    """The backfill's runs, oldest first."""
    runs = instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
    return sorted(runs, key=lambda run: run.tags.get(PARTITION_TAG, ""))


def backfill_settled(
    instance: dg.DagsterInstance, backfill_id: str
) -> tuple[bool, list[dg.DagsterRun]]:
    """(done, runs): done once the backfill daemon has launched every range and all its runs
    finished; one look, no waiting."""
    from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

    backfill = instance.get_backfill(backfill_id)
    runs = backfill_runs(instance, backfill_id)
    done = backfill is not None and backfill.status in BULK_ACTION_TERMINAL_STATUSES
    return done and all(run.status in FINISHED for run in runs), runs


Look = Callable[[], tuple[bool, list[dg.DagsterRun]]]


def wait_until(look: Look, seconds: float) -> tuple[bool, list[dg.DagsterRun]]:
    """``look`` until it says done, or as things stand when ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        done, runs = look()
        if done or time.monotonic() >= deadline:
            return done, runs
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


async def wait_until_async(look: Look, seconds: float) -> tuple[bool, list[dg.DagsterRun]]:
    """``wait_until`` for the API: each look runs in a worker thread, the waits in between hold
    none, so requests waiting for their runs never starve the API's other requests."""
    deadline = time.monotonic() + seconds
    while True:
        done, runs = await anyio.to_thread.run_sync(look)
        if done or time.monotonic() >= deadline:
            return done, runs
        await anyio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def wait_for_runs(
    instance: dg.DagsterInstance, run_ids: Sequence[str], seconds: float
) -> list[dg.DagsterRun]:
    """The runs once all have finished, or as they are when ``seconds`` have passed."""
    return wait_until(partial(runs_settled, instance, run_ids), seconds)[1]


def wait_for_backfill(
    instance: dg.DagsterInstance, backfill_id: str, seconds: float
) -> tuple[bool, list[dg.DagsterRun]]:
    """(done, runs) of the backfill once done, else as things stand when ``seconds`` passed."""
    return wait_until(partial(backfill_settled, instance, backfill_id), seconds)


def run_counts(instance: dg.DagsterInstance, run_id: str) -> dict[str, int | float | str]:
    """What the run's write step recorded (rows read, jobs updated, marker after, ...), from the
    event log; empty when it wrote nothing."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or not (event.step_key or "").endswith("write_updates"):
            continue
        metadata = event.step_output_data.metadata
        return {key: value.value for key, value in metadata.items()}
    return {}


def run_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the run failed: its first step failure, else the run failure message."""
    for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        records = instance.get_records_for_run(run_id, of_type=kind, limit=1).records
        for record in records:
            event = record.event_log_entry.dagster_event
            if event is None:
                continue
            if kind is dg.DagsterEventType.STEP_FAILURE:
                return event.event_specific_data.error.message.strip()
            return event.message
    return None


def run_window(run: dg.DagsterRun) -> str:
    """``source:from-to`` of a run: its window tag, else its marker-range partition."""
    if WINDOW_TAG in run.tags:
        return run.tags[WINDOW_TAG]
    source = run.tags.get(SOURCE_TAG, "?")
    key = run.tags.get(PARTITION_TAG)
    if key is None:
        return source
    lo, hi = key_bounds(key)
    return f"{source}:{lo}-{hi}"
