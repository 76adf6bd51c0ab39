"""Work handed to Dagster: windows as runs in the instance's run queue, marker ranges as partition
backfills. The queue's one-run-per-source pool, run monitoring and the run history then apply to
every run alike, whoever asked for it (sensor, asset page, API, CLI); this module only plans what
to ask for, asks, and reads the answers back from the event log."""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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

logger = logging.getLogger(__name__)


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


# One plan per source at a time, in this process (a thread waits here holding no connection)
# and across processes (API workers, the CLI, the sensors): an advisory lock on the jobmanager
# database, transaction-scoped, around reading the runs in flight, planning and queuing. Without
# it two requests both saw the same runs in flight and both queued the windows past them.
PLAN_LOCK_SQL = sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))")
# The sensors only try it: a tick that finds a request planning skips (it looks again next tick)
# rather than wait, since that request may itself be waiting for the tick to finish (below).
PLAN_TRY_LOCK_SQL = sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:name))")
_PLAN_LOCKS = {name: threading.Lock() for name in SOURCE_NAMES}
# A sensor tick's runs are queued by the daemon after the tick's evaluation returned (and let go
# of the lock); the tick stays STARTED until they are. A request waits this long at most for
# such a tick before it plans; a tick in progress is one STARTED less than TICK_RECENT_SECONDS
# ago (an evaluation times out after 60 s): an older STARTED tick is one a daemon was stopped
# in. The daemon, back, resumes such a tick (or retries a FAILURE one, once) for up to
# RESUMABLE_TICK_SECONDS (Dagster's MAX_TIME_TO_RESUME_TICK_SECONDS) and queues the runs it had
# reserved but not queued: while a tick owes such runs, a request queues nothing of the source
# (the daemon will queue those windows, and the sensor plans past them after).
TICK_WAIT_SECONDS = 60.0
TICK_RECENT_SECONDS = 120.0
RESUMABLE_TICK_SECONDS = 24 * 60 * 60
MAX_FAILURE_RESUBMISSIONS = 1  # dagster/_daemon/sensor.py MAX_FAILURE_RESUBMISSION_RETRIES


def plan_lock_name(source_type: str) -> str:
    return f"jobstatus.plan.{source_type}"


@contextmanager
def planning(defs: dg.Definitions, source_type: str) -> Iterator[None]:
    """Hold the source's planning lock (this process's, then the database's) for the block."""
    engine = defs.resources["jobmanager"].engine
    with _PLAN_LOCKS[source_type], engine.begin() as conn:
        conn.execute(PLAN_LOCK_SQL, {"name": plan_lock_name(source_type)})
        yield


def sensor_selector_id(source_type: str) -> str:
    """The id Dagster files the source sensor's ticks under: its (code location, repository,
    name), the same whether the location is a code server or a module the daemon loads."""
    from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
    from dagster._core.definitions.selector import InstigatorSelector

    return InstigatorSelector(
        location_name=LOCATION_NAME,
        repository_name=SINGLETON_REPOSITORY_NAME,
        name=source_named(source_type).sensor_name,
    ).get_id()


def _ticks(
    instance: dg.DagsterInstance, source_type: str, within: float, statuses=None, limit=None
):
    return instance.get_ticks(
        "",  # ticks are found by selector id; the origin id only matters for pre-0.15 ticks
        sensor_selector_id(source_type),
        after=time.time() - within,
        limit=limit,
        statuses=statuses,
    )


def sensor_tick_in_progress(instance: dg.DagsterInstance, source_type: str) -> bool:
    """Whether the source's sensor is in a tick now: evaluating, or its runs not all queued."""
    from dagster._core.scheduler.instigation import TickStatus

    started = _ticks(instance, source_type, TICK_RECENT_SECONDS, [TickStatus.STARTED], limit=1)
    return bool(started)


def tick_owes_runs(instance: dg.DagsterInstance, source_type: str) -> bool:
    """Whether the sensor's latest tick reserved runs it has not queued and the daemon will
    queue them yet: a STARTED tick (interrupted: the daemon resumes it) or a FAILURE one it
    retries once (the code server unreachable while queuing), within the daemon's 24 h."""
    from dagster._core.scheduler.instigation import TickStatus

    latest = _ticks(instance, source_type, RESUMABLE_TICK_SECONDS, limit=1)
    if not latest:
        return False
    tick = latest[0]
    resumable = tick.status == TickStatus.STARTED or (
        tick.status == TickStatus.FAILURE
        and tick.tick_data.failure_count <= MAX_FAILURE_RESUBMISSIONS
    )
    return resumable and bool(tick.unsubmitted_run_ids_with_requests)


def wait_for_sensor_tick(
    instance: dg.DagsterInstance, source_type: str, seconds: float = TICK_WAIT_SECONDS
) -> bool:
    """Wait (up to ``seconds``) until no tick of the source's sensor is in progress, so that the
    runs it requested are in the queue before a request reads the runs in flight; False when
    one still is."""
    deadline = time.monotonic() + seconds
    while sensor_tick_in_progress(instance, source_type):
        if time.monotonic() >= deadline:
            logger.warning("%s sensor tick still in progress after %.0f s", source_type, seconds)
            return False
        time.sleep(POLL_SECONDS)
    return True


def submit_source(
    defs: dg.Definitions, instance: dg.DagsterInstance, source_type: str, trigger: str
) -> Submitted:
    """Queue a run per window past the marker and the runs in flight, under the source's planning
    lock: concurrent or repeated requests never queue a window twice. Consecutive windows may
    wait in the queue together: the pool runs them one at a time, and a window whose predecessor
    failed still writes, but never moves the marker past the failed one."""
    with planning(defs, source_type):
        return _submit_source(defs, instance, source_type, trigger)


def _submit_source(
    defs: dg.Definitions, instance: dg.DagsterInstance, source_type: str, trigger: str
) -> Submitted:
    source = source_named(source_type)
    job = defs.resolve_job_def(source.job_name)
    submitted = Submitted(source_type)
    # A sensor tick under way has planned (under this lock, which it let go) and the daemon is
    # queuing its runs: they count as in flight once they are in the queue.
    wait_for_sensor_tick(instance, source_type)
    # Read before the runs: a tick the daemon resumes in between has queued its runs (seen
    # below) or still owes them (seen here); the other order could miss them both.
    owed_by_tick = tick_owes_runs(instance, source_type)
    # Runs already waiting (the sensor's, another request's) are this request's too: waited
    # for, not queued again.
    waiting = runs_in_flight(instance, source_type)
    for run in waiting:
        submitted.run_ids.append(run.run_id)
        submitted.windows[run.run_id] = run_window(run)
    if owed_by_tick:
        logger.warning(
            "%s: a sensor tick owes runs the daemon will queue; nothing planned", source_type
        )
        return submitted
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


def submit_whole_source_backfill(
    defs: dg.Definitions, instance: dg.DagsterInstance, source_type: str, trigger: str
) -> str | None:
    """``force``: a backfill over every range of the source holding rows, under the source's
    planning lock; while one covering those ranges is still in flight (a concurrent or repeated
    request's, or the asset page's), its id rather than a second backfill. None without rows."""
    with planning(defs, source_type):
        bounds = whole_source_bounds(defs, source_type)
        if bounds is None:
            return None
        width = defs.resources["processing"].resolved().partition_width
        buckets = marker_buckets(defs.resources["jobmanager"].engine, source_type, *bounds, width)
        keys = {bucket_key(lo + 1, width) for lo in buckets}
        running = backfill_in_flight(defs, instance, source_type, keys)
        if running is not None:
            return running
        backfill_id, _ = submit_backfill(defs, instance, source_type, *bounds, trigger)
        return backfill_id


def backfill_in_flight(
    defs: dg.Definitions, instance: dg.DagsterInstance, source_type: str, keys: set[str]
) -> str | None:
    """A backfill of the source not yet finished whose ranges include every one of ``keys``."""
    from dagster._core.execution.backfill import (
        BULK_ACTION_TERMINAL_STATUSES,
        BulkActionsFilter,
        BulkActionStatus,
    )

    statuses = [s for s in BulkActionStatus if s not in BULK_ACTION_TERMINAL_STATUSES]
    key = source_named(source_type).processing_key
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=statuses)):
        data = backfill.asset_backfill_data
        if data is None or key not in data.target_subset.asset_keys:
            continue
        targeted = set(data.target_subset.get_partitions_subset(key).get_partition_keys())
        if keys <= targeted:
            return backfill.backfill_id
    return None


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


@dataclass(frozen=True)
class Snapshot:
    """One look at every watched run and backfill, by id."""

    runs: dict[str, dg.DagsterRun] = field(default_factory=dict)
    backfills: dict[str, object] = field(default_factory=dict)  # id → PartitionBackfill
    backfill_runs: dict[str, list[dg.DagsterRun]] = field(default_factory=dict)


@dataclass(eq=False)
class _Waiter:
    run_ids: Sequence[str] = ()
    backfill_id: str | None = None
    seen: anyio.Event = field(default_factory=anyio.Event)
    done: bool = False
    runs: list[dg.DagsterRun] = field(default_factory=list)
    looked: bool = False

    def update(self, snapshot: Snapshot) -> None:
        from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES

        if self.backfill_id is None:
            self.runs = [snapshot.runs[i] for i in self.run_ids if i in snapshot.runs]
            self.done = all(run.status in FINISHED for run in self.runs)
        else:
            backfill = snapshot.backfills.get(self.backfill_id)
            self.runs = sorted(
                snapshot.backfill_runs.get(self.backfill_id, []),
                key=lambda run: run.tags.get(PARTITION_TAG, ""),
            )
            finished = getattr(backfill, "status", None) in BULK_ACTION_TERMINAL_STATUSES
            self.done = finished and all(run.status in FINISHED for run in self.runs)
        self.looked = True
        self.seen.set()


class ClientGone(Exception):  # noqa: N818 - an outcome, not a fault
    """The client waiting for the runs hung up: nobody is left to answer."""


class RunWatcher:
    """One poller per process for every request waiting on runs or backfills: each round reads
    all the watched runs in one query (and the watched backfills and their runs in two), then
    wakes the waiters. It runs only while someone waits; a waiter whose client hung up leaves at
    the next round. Before it, each waiting request polled every run of its own every 0.25 s:
    30 abandoned waits tripled the dagster database's commits for up to ten minutes."""

    def __init__(self, instance: dg.DagsterInstance, poll_seconds: float = POLL_SECONDS) -> None:
        self.instance = instance
        self.poll_seconds = poll_seconds
        self._waiters: set[_Waiter] = set()
        self._task: asyncio.Task | None = None
        self.rounds = 0  # how many times it looked (tests and bench/ read these)
        self.queries = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait_for_runs(
        self, run_ids: Sequence[str], seconds: float, gone: Callable | None = None
    ) -> tuple[bool, list[dg.DagsterRun]]:
        """(all finished, the runs) once all have finished, or as they are after ``seconds``.
        ``gone`` (async, no arguments) says whether the client left: then ``ClientGone``."""
        return await self._wait(_Waiter(run_ids=list(run_ids)), seconds, gone)

    async def wait_for_backfill(
        self, backfill_id: str, seconds: float, gone: Callable | None = None
    ) -> tuple[bool, list[dg.DagsterRun]]:
        """As ``backfill_settled``: done once every range was launched and all runs finished."""
        return await self._wait(_Waiter(backfill_id=backfill_id), seconds, gone)

    async def _wait(
        self, waiter: _Waiter, seconds: float, gone: Callable | None
    ) -> tuple[bool, list[dg.DagsterRun]]:
        if not waiter.run_ids and waiter.backfill_id is None:
            return True, []
        deadline = anyio.current_time() + seconds
        self._waiters.add(waiter)
        try:
            self._start()
            while True:
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                    await waiter.seen.wait()
                waiter.seen = anyio.Event()
                if waiter.done or anyio.current_time() >= deadline:
                    break
                if gone is not None and await gone():
                    raise ClientGone
        finally:
            self._waiters.discard(waiter)
        if not waiter.looked:  # wait 0: no round yet
            waiter.update(await anyio.to_thread.run_sync(self._look, [waiter]))
        return waiter.done, waiter.runs

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._poll())

    async def _poll(self) -> None:
        # Ends when nobody waits: between that test and the end there is no await, so a waiter
        # that joins meanwhile finds the task done and starts another.
        while self._waiters:
            waiters = list(self._waiters)
            try:
                snapshot = await anyio.to_thread.run_sync(self._look, waiters)
            except Exception as error:  # noqa: BLE001 - storage down: waiters time out as before
                logger.warning("watching runs failed (%s); looking again", type(error).__name__)
            else:
                for waiter in waiters:
                    waiter.update(snapshot)
            await anyio.sleep(self.poll_seconds)

    def _look(self, waiters: Sequence[_Waiter]) -> Snapshot:
        from dagster._core.execution.backfill import BulkActionsFilter

        run_ids = sorted({i for w in waiters for i in w.run_ids})
        backfill_ids = sorted({w.backfill_id for w in waiters if w.backfill_id is not None})
        snapshot = Snapshot()
        self.rounds += 1
        if run_ids:
            self.queries += 1
            runs = self.instance.get_runs(dg.RunsFilter(run_ids=run_ids))
            snapshot.runs.update((run.run_id, run) for run in runs)
        if backfill_ids:
            self.queries += 2
            found = self.instance.get_backfills(
                filters=BulkActionsFilter(backfill_ids=backfill_ids)
            )
            snapshot.backfills.update((b.backfill_id, b) for b in found)
            for run in self.instance.get_runs(dg.RunsFilter(tags={BACKFILL_TAG: backfill_ids})):
                snapshot.backfill_runs.setdefault(run.tags[BACKFILL_TAG], []).append(run)
        return snapshot


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
        # Numbers and text only: what the API's answer can carry, whatever else a run recorded.
        return {
            key: value.value
            for key, value in metadata.items()
            if isinstance(value.value, int | float | str)
        }
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
    """``source:from-to`` of a run: its window tag, else its marker-range partition; a partition
    key that is no marker range (anyone can add keys in the UI) is shown as it is."""
    if WINDOW_TAG in run.tags:
        return run.tags[WINDOW_TAG]
    source = run.tags.get(SOURCE_TAG, "?")
    key = run.tags.get(PARTITION_TAG)
    if key is None:
        return source
    try:
        lo, hi = key_bounds(key)
    except ValueError:
        return f"{source}:{key}"
    return f"{source}:{lo}-{hi}"
