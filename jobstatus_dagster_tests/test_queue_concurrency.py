"""An API no client can wear down (issue 19): concurrent or repeated processing requests never
queue a window or a force backfill twice (one plan per source at a time, under a lock that holds
across processes), waiting requests share one watcher of the runs and stop watching when their
client hangs up, and the instance's storage connections are pooled.

Each test has a Dagster instance of its own that no daemon serves: what the requests queued
stays in the queue, to be counted; the API is served for real (uvicorn) and hit concurrently."""

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from jobstatus_dagster.api import create_app
from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.pipeline import queue
from jobstatus_dagster.pipeline.ops import WINDOW_TAG
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.databases import fresh_urls
from jobstatus_testkit.serving import serve

WRITE = {"Authorization": "Bearer w"}
WIDTH = 100


@pytest.fixture
def idle(pg_admin_uri: str, tmp_path: Path):
    """A Dagster instance of its own that no daemon serves, and its database's URL."""
    alone = fresh_urls(pg_admin_uri).dagster
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=instance_overrides(alone)) as inst:
        yield inst, alone


@pytest.fixture(scope="module")
def backlog(urls: DatabaseUrls) -> Shop:
    """Print rows in chunks of two across several marker ranges, and scans: many windows."""
    shop = Shop(urls, partition_width=WIDTH, chunk_size=2)
    for marker in (*range(1, 12), 150, 151, 152, 420):
        shop.print_event("C-I1", "PRINTED", marker=marker)
    for _ in range(5):
        shop.scan("C-I1", ["coating"])
    return shop


def app_for(shop: Shop, instance: dg.DagsterInstance, urls: DatabaseUrls):
    return create_app(
        shop.definitions(), instance, urls.jobmanager, urls.logs, token="w", read_token="r"
    )


def burst(url: str, path: str, body: dict, count: int, timeout: float = 120) -> list:
    """``count`` requests sent at once (released together by a barrier)."""
    start = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        start.wait()
        return httpx.post(f"{url}{path}", json=body, headers=WRITE, timeout=timeout)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def windows(instance: dg.DagsterInstance) -> Counter:
    return Counter(run.tags.get(WINDOW_TAG) for run in instance.get_runs())


def test_50_concurrent_requests_queue_each_window_once(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    instance, _ = idle
    with serve(app_for(backlog, instance, urls)) as url:
        answers = burst(url, "/api/process-status-updates", {"source": "both", "wait": 0}, 50)
        assert {answer.status_code for answer in answers} == {202}
        queued = windows(instance)
        assert queued and max(queued.values()) == 1, queued
        # Every request answers with the same runs: those it queued or found queued.
        seen = {frozenset(r["run_id"] for r in a.json()["runs"]) for a in answers}
        assert frozenset(run.run_id for run in instance.get_runs()) == max(seen, key=len)
        # What one request alone would have queued, no more, no less.
        planned = {
            planned.window_tag
            for source in ("print_os", "scanner")
            for planned in queue.plan_source(backlog.definitions(), source, queue.InFlight())
        }
        assert set(queued) == planned

        again = burst(url, "/api/process-status-updates", {"wait": 0}, 10)
        assert {answer.status_code for answer in again} == {202}
        assert windows(instance) == queued  # repeated: nothing new to queue, nothing queued


def test_the_plan_waits_for_the_database_lock_another_process_holds(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    """The lock is Postgres's (advisory, per source): a planner in another process holding it
    (here a connection of the test) keeps this one from queuing until it lets go."""
    instance, _ = idle
    engine = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    outcome: list[queue.Submitted] = []
    planner = threading.Thread(
        target=lambda: outcome.append(
            queue.submit_source(backlog.definitions(), instance, "print_os", "test")
        )
    )
    try:
        with engine.begin() as conn:
            conn.execute(queue.PLAN_LOCK_SQL, {"name": "jobstatus.plan.print_os"})
            planner.start()
            planner.join(timeout=3)
            assert planner.is_alive() and instance.get_runs_count() == 0
        planner.join(timeout=60)
    finally:
        engine.dispose()
    assert not planner.is_alive()
    (submitted,) = outcome
    assert len(submitted.run_ids) == instance.get_runs_count() > 0


def test_5_concurrent_force_requests_make_one_backfill(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    instance, _ = idle
    with serve(app_for(backlog, instance, urls)) as url:
        answers = burst(url, "/api/process-print-os", {"force": True, "wait": 0}, 5)
        assert {answer.status_code for answer in answers} == {202}
        (backfill,) = instance.get_backfills()
        assert {answer.json()["backfill_id"] for answer in answers} == {backfill.backfill_id}
        # Repeated while that one is still in flight: the same backfill again.
        later = httpx.post(
            f"{url}/api/process-print-os", json={"force": True, "wait": 0}, headers=WRITE
        )
        assert later.status_code == 202 and later.json()["backfill_id"] == backfill.backfill_id
        assert len(instance.get_backfills()) == 1


def test_waiting_requests_share_one_watcher_that_stops_when_their_clients_hang_up(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    """30 requests waiting up to 600 s whose clients hang up after 15 s: while they wait, one
    query per round reads all their runs; once they are gone nobody polls any more. (The
    clients' patience only has to outlast the 30 plans, made one at a time.)"""
    instance, _ = idle
    app = app_for(backlog, instance, urls)
    watcher: queue.RunWatcher = app.state.processor.watcher
    with serve(app) as url:

        def abandoned(_: int) -> str:
            try:
                httpx.post(
                    f"{url}/api/process-status-updates",
                    json={"wait": 600},
                    headers=WRITE,
                    timeout=15,
                )
            except httpx.ReadTimeout:
                return "hung up"
            return "answered"

        with ThreadPoolExecutor(max_workers=30) as pool:
            waiting = pool.map(abandoned, range(30))
            deadline = time.monotonic() + 14
            while watcher.waiting < 30:
                assert time.monotonic() < deadline, watcher.waiting
                time.sleep(0.05)
            rounds, queries = watcher.rounds, watcher.queries
            while watcher.rounds < rounds + 3:
                time.sleep(0.05)
            # One query per round for all 30 waiters' runs, not one per waiter.
            assert watcher.queries - queries == watcher.rounds - rounds
            assert list(waiting) == ["hung up"] * 30
        deadline = time.monotonic() + 30
        while watcher.waiting:
            assert time.monotonic() < deadline, f"{watcher.waiting} waiters still watched"
            time.sleep(0.05)
        stopped = watcher.rounds
        time.sleep(2)  # eight rounds' worth: none may come
        assert watcher.rounds == stopped


def test_the_instance_storage_connections_are_pooled(
    backlog: Shop, idle, urls: DatabaseUrls, pg_admin_uri: str
) -> None:
    """Following runs reads the run storage and the event log many times; each read used to open
    a Postgres session of its own (dagster-postgres's NullPool)."""
    instance, dagster_url = idle
    app = app_for(backlog, instance, urls)
    database = sa.engine.make_url(to_sqlalchemy_url(dagster_url))
    admin = sa.create_engine(to_sqlalchemy_url(pg_admin_uri))

    def sessions() -> int:
        time.sleep(1)  # a session's end reaches the statistics when its backend has exited
        with admin.connect() as conn:
            return conn.execute(
                sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :d"),
                {"d": database.database},
            ).scalar_one()

    try:
        with serve(app) as url:
            queued = httpx.post(
                f"{url}/api/process-status-updates", json={"wait": 0}, headers=WRITE, timeout=60
            ).json()["runs"]
            before = sessions()
            for _ in range(10):
                for run in queued:
                    answer = httpx.get(f"{url}/api/runs/{run['run_id']}", headers=WRITE)
                    assert answer.status_code == 200
            after = sessions()
    finally:
        admin.dispose()
    reads = 10 * len(queued)
    assert reads >= 20
    assert after - before < 5, (after - before, reads)


def sensor_tick(shop: Shop, instance: dg.DagsterInstance) -> dg.SensorResult:
    """One evaluation of the print sensor, as the daemon's code server makes it."""
    defs = shop.definitions()
    sensor = defs.resolve_sensor_def("print_os_sensor")
    resources = {name: defs.resources[name] for name in ("jobmanager", "processing")}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return sensor(context)


def test_a_sensor_tick_skips_while_a_request_plans_the_source(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    """The sensors plan under the same lock as requests: a tick that meets a request planning
    queues nothing (it would plan from runs in flight the request has not queued yet)."""
    instance, _ = idle
    engine = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    try:
        with engine.begin() as conn:
            conn.execute(queue.PLAN_LOCK_SQL, {"name": queue.plan_lock_name("print_os")})
            held = sensor_tick(backlog, instance)
        assert not held.run_requests
        assert "planning print_os" in held.skip_reason.skip_message
    finally:
        engine.dispose()
    assert sensor_tick(backlog, instance).run_requests  # the lock free: the windows are asked for


def test_a_request_waits_for_the_sensor_tick_whose_runs_are_being_queued(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    """Issue 19's remaining race, as the daemon orders it: a tick is STARTED, its evaluation
    planned the windows (and let go of the lock), and the daemon queues its runs only then.
    A request arriving in between waits for the tick, then finds those runs in flight and
    queues no window twice (before: it queued them all again)."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus

    instance, _ = idle
    tick = instance.create_tick(
        TickData(
            instigator_origin_id="daemon",
            instigator_name="print_os_sensor",
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.STARTED,
            timestamp=time.time(),
            selector_id=queue.sensor_selector_id("print_os"),
        )
    )
    requested = sensor_tick(backlog, instance).run_requests
    assert requested
    defs = backlog.definitions()
    outcome: list[queue.Submitted] = []
    request = threading.Thread(
        target=lambda: outcome.append(queue.submit_source(defs, instance, "print_os", "api"))
    )
    request.start()
    request.join(timeout=2)
    assert request.is_alive() and instance.get_runs_count() == 0  # waiting for the tick
    job = defs.resolve_job_def("process_print_os")
    partitions = defs.resolve_job_def("process_print_os").partitions_def
    for run_request in requested:  # the daemon queues the tick's runs, then closes the tick
        queue.submit_run(
            instance,
            job,
            run_config=run_request.run_config,
            tags=run_request.tags,
            partition_key=run_request.partition_key,
            partitions=partitions,
        )
    instance.update_tick(tick.with_status(TickStatus.SUCCESS))
    request.join(timeout=60)
    assert not request.is_alive()
    counts = windows(instance)
    assert counts and set(counts.values()) == {1}, counts  # every window queued once
    (submitted,) = outcome
    assert set(submitted.windows.values()) >= {r.tags[WINDOW_TAG] for r in requested}


def test_a_dangling_started_tick_does_not_hold_requests(
    backlog: Shop, idle, urls: DatabaseUrls
) -> None:
    """A tick a daemon was stopped in stays STARTED until the daemon's next look: once older
    than TICK_RECENT_SECONDS it is no tick in progress, and a request plans at once."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus

    instance, _ = idle
    instance.create_tick(
        TickData(
            instigator_origin_id="daemon",
            instigator_name="print_os_sensor",
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.STARTED,
            timestamp=time.time() - queue.TICK_RECENT_SECONDS - 5,
            selector_id=queue.sensor_selector_id("print_os"),
        )
    )
    started = time.monotonic()
    submitted = queue.submit_source(backlog.definitions(), instance, "print_os", "api")
    assert submitted.run_ids and time.monotonic() - started < queue.TICK_WAIT_SECONDS / 2
