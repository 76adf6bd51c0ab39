"""A sensor tick and a processing request racing (issue 19, found by review): the tick's
snapshot of the source is taken after it read the runs in flight, and the runs an interrupted
tick reserved count as in flight for a request (the daemon queues them when it resumes)."""

import time
from pathlib import Path

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
    from types import SimpleNamespace

    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus
    from dagster._daemon.sensor import _get_evaluation_tick

    instance = idle
    shop = Shop(urls, partition_width=100, chunk_size=2)
    for marker in range(1, 7):
        shop.print_event("C-I1", "PRINTED", marker=marker)
    requested = list(sensor_tick(shop, instance).run_requests or [])
    assert requested
    selector_id = queue.sensor_selector_id("print_os")
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
    # The reserved ones are the request's to wait for, as runs in flight are.
    assert {f"reserved-{i}" for i in range(len(requested))} <= set(submitted.run_ids)
    # The daemon, back, looks at the sensor: Dagster's own choice of tick to evaluate.
    sensor = SimpleNamespace(
        name="print_os_sensor",
        get_remote_origin_id=lambda: "origin",
        get_remote_origin=lambda: SimpleNamespace(
            get_selector=lambda: SimpleNamespace(get_id=lambda: selector_id)
        ),
    )
    tick = _get_evaluation_tick(instance, sensor, None, time.time(), logging.getLogger("t"))
    resumed = {request.tags[WINDOW_TAG] for _, request in tick.unsubmitted_run_ids_with_requests}
    assert not (queued & resumed), (
        f"queued by the request and again by the daemon: {queued & resumed}"
    )
