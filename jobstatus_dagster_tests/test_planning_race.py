"""A sensor tick and a processing request racing (issue 19, found by review): the tick's
snapshot of the source is taken after it read the runs in flight, and the runs an interrupted
tick reserved count as in flight for a request (the daemon queues them when it resumes)."""

import logging
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.pipeline import queue
from jobstatus_dagster.pipeline.ops import WINDOW_TAG
from jobstatus_dagster.pipeline.windows import IN_FLIGHT
from jobstatus_dagster_tests.shop import Shop
from jobstatus_dagster_tests.test_queue_concurrency import sensor_tick
from jobstatus_testkit.databases import fresh_urls


@pytest.fixture
def idle(pg_admin_uri: str, tmp_path: Path):
    """A Dagster instance of its own that no daemon serves."""
    alone = fresh_urls(pg_admin_uri).dagster
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=instance_overrides(alone)) as inst:
        yield inst


def test_sensor_snapshot_taken_before_runs_in_flight_requeues_a_finished_window(
    urls: DatabaseUrls, idle: dg.DagsterInstance
) -> None:
    """45d8caf moved the runs-in-flight read after the REPEATABLE READ snapshot (taken by the
    try-lock statement): a run that commits its marker and finishes between the two is neither
    in flight nor past the snapshot's marker, so the tick plans its window again."""
    instance = idle
    shop = Shop(urls, partition_width=100, chunk_size=2)
    for marker in (1, 2):
        shop.print_event("C-I1", "PRINTED", marker=marker)
    defs = shop.definitions()
    submitted = queue.submit_source(defs, instance, "print_os", "api")
    (first,) = submitted.run_ids  # one window, (0, 2], queued by a request
    window = submitted.windows[first]
    assert window == "print_os:0-2", submitted.windows
    real = instance.get_run_records
    done = []

    def get_run_records(filters=None, *args, **kwargs):
        if not done and filters is not None and list(filters.statuses or []) == IN_FLIGHT:
            done.append(True)
            # The window's run ends now: its marker commit, then its SUCCESS.
            shop.execute(
                shop.jm,
                "UPDATE processing_markers SET last_processed_id = 2"
                " WHERE marker_type = 'print_os'",
            )
            run = instance.get_run_by_id(first)
            instance.handle_run_event(
                first,
                dg.DagsterEvent(
                    event_type_value=dg.DagsterEventType.RUN_SUCCESS.value,
                    job_name=run.job_name,
                ),
            )
        return real(filters, *args, **kwargs)

    instance.get_run_records = get_run_records  # type: ignore[method-assign]
    result = sensor_tick(shop, instance)
    assert done
    requested = [r.tags[WINDOW_TAG] for r in result.run_requests or []]
    assert window not in requested, f"finished window {window} requested again: {requested}"


def test_a_request_requeues_the_windows_of_an_interrupted_tick_the_daemon_will_resume(
    urls: DatabaseUrls, idle: dg.DagsterInstance
) -> None:
    """queue.py treats a STARTED tick older than TICK_DANGLING_SECONDS as dead ("the daemon
    moves it to SKIPPED at its next look"), and any tick after TICK_WAIT_SECONDS. But a tick
    interrupted after reserving its run ids is *resumed* by the daemon for up to 24 h
    (dagster/_daemon/sensor.py MAX_TIME_TO_RESUME_TICK_SECONDS) and its runs submitted then: a
    request that planned meanwhile has queued the same windows, so each is queued twice."""
    import logging

    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus
    from dagster._daemon.sensor import _get_evaluation_tick

    instance = idle
    shop, requested, selector_id = _shop_with_a_tick_s_requests(urls, instance)
    # The daemon died after RUN_IDS_RESERVED (killed, host rebooted) some minutes ago.
    instance.create_tick(
        TickData(
            instigator_origin_id="origin",
            instigator_name="print_os_sensor",
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.STARTED,
            timestamp=time.time() - queue.TICK_RECENT_SECONDS - 5,
            selector_id=selector_id,
            run_requests=requested,
            reserved_run_ids=[f"reserved-{i}" for i in range(len(requested))],
        )
    )
    submitted = queue.submit_source(shop.definitions(), instance, "print_os", "api")
    queued = {run.tags[WINDOW_TAG] for run in instance.get_runs()}  # runs the request made
    # Nothing of the source is planned while the tick owes runs, and no id that is no run yet
    # is handed to the request's waiters (they would count it finished: review 3).
    assert queued == set() and submitted.run_ids == []
    # The daemon, back, looks at the sensor: Dagster's own choice of tick to evaluate.
    sensor = _daemon_view(selector_id)
    tick = _get_evaluation_tick(instance, sensor, None, time.time(), logging.getLogger("t"))
    resumed = {request.tags[WINDOW_TAG] for _, request in tick.unsubmitted_run_ids_with_requests}
    assert not (queued & resumed), (
        f"queued by the request and again by the daemon: {queued & resumed}"
    )


def _shop_with_a_tick_s_requests(
    urls: DatabaseUrls, instance: dg.DagsterInstance
) -> tuple[Shop, list, str]:
    """Six print rows past the marker, the run requests a sensor tick makes for them, and the
    id Dagster files that sensor's ticks under."""
    shop = Shop(urls, partition_width=100, chunk_size=2)
    for marker in range(1, 7):
        shop.print_event("C-I1", "PRINTED", marker=marker)
    requested = list(sensor_tick(shop, instance).run_requests or [])
    assert requested
    return shop, requested, queue.sensor_selector_id("print_os")


def _daemon_view(selector_id: str) -> SimpleNamespace:
    return SimpleNamespace(
        name="print_os_sensor",
        get_remote_origin_id=lambda: "origin",
        get_remote_origin=lambda: SimpleNamespace(
            get_selector=lambda: SimpleNamespace(get_id=lambda: selector_id)
        ),
    )


def test_a_request_requeues_the_windows_of_a_failed_tick_the_daemon_will_retry(
    urls: DatabaseUrls,
    idle: dg.DagsterInstance,
) -> None:
    """A tick whose run submission raised (the code server unreachable while the daemon queues
    its runs: _submit_run_request calls the code location for each run, outside any try) ends
    FAILURE with its reserved runs unsubmitted; failure_count is not raised for an unreachable
    server. The daemon's next look (dagster/_daemon/sensor.py _get_evaluation_tick: FAILURE,
    failure_count <= MAX_FAILURE_RESUBMISSION_RETRIES, has_unrequested_runs) creates a new tick
    from it and queues those runs. A request in between must not plan the same windows (review 3:
    only STARTED ticks were read)."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus
    from dagster._daemon.sensor import _get_evaluation_tick
    from dagster_shared.error import SerializableErrorInfo

    instance = idle
    shop, requested, selector_id = _shop_with_a_tick_s_requests(urls, instance)
    instance.create_tick(
        TickData(
            instigator_origin_id="origin",
            instigator_name="print_os_sensor",
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.FAILURE,
            timestamp=time.time() - 20,
            selector_id=selector_id,
            run_requests=requested,
            reserved_run_ids=[f"reserved-{i}" for i in range(len(requested))],
            failure_count=0,
            error=SerializableErrorInfo(
                "Unable to reach the user code server", [], "DagsterUserCodeUnreachableError"
            ),
        )
    )
    queue.submit_source(shop.definitions(), instance, "print_os", "api")
    queued = {run.tags[WINDOW_TAG] for run in instance.get_runs()}
    tick = _get_evaluation_tick(
        instance, _daemon_view(selector_id), None, time.time(), logging.getLogger("t")
    )
    resumed = {request.tags[WINDOW_TAG] for _, request in tick.unsubmitted_run_ids_with_requests}
    assert resumed, "the daemon retries the failed tick's runs"
    assert not (queued & resumed), (
        f"queued by the request and again by the daemon: {sorted(queued & resumed)}"
    )


def test_a_request_misses_the_runs_a_resumed_tick_queues_between_its_two_reads(
    urls: DatabaseUrls,
    idle: dg.DagsterInstance,
) -> None:
    """Found by review 3 when _submit_source read the runs in flight first, the ticks second. A daemon
    resuming an interrupted tick (STARTED, older than TICK_RECENT_SECONDS: not waited for)
    creates its runs and then writes the tick finished (add_run_info only changes the tick in
    memory; the tick row is written at the end). When that happens between the two reads, the
    runs are in neither: the request plans their windows again. Reading the ticks first (and
    the runs after) leaves no such gap."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus

    instance = idle
    shop = Shop(urls, partition_width=100, chunk_size=2)
    for marker in range(1, 7):
        shop.print_event("C-I1", "PRINTED", marker=marker)
    requested = list(sensor_tick(shop, instance).run_requests or [])
    assert requested
    reserved = [f"reserved-{i}" for i in range(len(requested))]
    tick = instance.create_tick(
        TickData(
            instigator_origin_id="origin",
            instigator_name="print_os_sensor",
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.STARTED,
            timestamp=time.time() - queue.TICK_RECENT_SECONDS - 5,
            selector_id=queue.sensor_selector_id("print_os"),
            run_requests=requested,
            reserved_run_ids=reserved,
        )
    )
    job_name = requested[0].job_name or "process_print_os"
    real = queue.runs_in_flight

    def runs_in_flight(inst: dg.DagsterInstance, source_type: str):
        runs = real(inst, source_type)
        # The resuming daemon, meanwhile: each reserved run created and queued, then the tick
        # written SUCCESS with their ids.
        finished = tick
        for run_id, request in zip(reserved, requested, strict=True):
            inst.add_run(
                dg.DagsterRun(
                    job_name=job_name,
                    run_id=run_id,
                    tags=dict(request.tags),
                    status=dg.DagsterRunStatus.NOT_STARTED,  # created, about to be queued
                )
            )
            finished = finished.with_run_info(run_id, request.run_key)
        inst.update_tick(finished.with_status(TickStatus.SUCCESS))
        return runs

    queue.runs_in_flight = runs_in_flight  # type: ignore[assignment]
    try:
        queue.submit_source(shop.definitions(), instance, "print_os", "api")
    finally:
        queue.runs_in_flight = real  # type: ignore[assignment]
    daemons = {dict(r.tags)[WINDOW_TAG] for r in requested}
    mine = {run.tags[WINDOW_TAG] for run in instance.get_runs() if run.run_id not in reserved}
    assert not (daemons & mine), f"queued by the daemon and again by the request: {daemons & mine}"
