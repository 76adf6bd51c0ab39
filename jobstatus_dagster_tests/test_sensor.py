"""The print-OS sensor: skip reasons, windows, run keys, one run per source at a time (§6)."""

import json
import time
from dataclasses import dataclass

import dagster as dg

from jobstatus_dagster.pipeline.partitions import bucket_key
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.sensors import SENSOR_LOOP_SECONDS
from jobstatus_dagster_tests.shop import Shop

WINDOW_0 = {
    "ops": {
        "print_os_processing": {
            "ops": {"load_print_os_window": {"config": {"from_marker": 0, "to_marker": 0}}}
        }
    }
}


def window_config(request) -> dict:
    ops = request.run_config["ops"]["print_os_processing"]["ops"]
    return ops["load_print_os_window"]["config"]


@dataclass
class Tick:
    run_requests: list[dg.RunRequest]
    skip_message: str | None
    cursor: str | None = None  # the cursor the tick leaves


def evaluate(
    shop: Shop, instance: dg.DagsterInstance, cursor: str | None = None, **processing
) -> Tick:
    """One tick, as the daemon would evaluate it (the sensor function with its resources)."""
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")
    resources = {
        "jobmanager": PostgresDatabase(url=shop.urls.jobmanager),
        "processing": ProcessingSettings(**processing),
    }
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return Tick([], result.skip_message, context.cursor)
    return Tick(list(result.run_requests), None, result.cursor)


def test_sensor_skips_with_the_current_marker_when_nothing_is_new(shop: Shop, instance) -> None:
    result = evaluate(shop, instance)
    assert result.run_requests == []
    assert f"nothing past the print_os marker {shop.marker()}" in result.skip_message


def test_sensor_requests_the_next_window_of_at_most_chunk_rows(shop: Shop, instance) -> None:
    marker = shop.marker()
    markers = [shop.print_event("IMP-S", "PRINTED")[1] for _ in range(5)]
    result = evaluate(shop, instance, chunk_size=2)
    (request,) = result.run_requests
    config = window_config(request)
    assert config == {"from_marker": marker, "to_marker": markers[1]}
    assert request.tags["jobstatus/source"] == "print_os"
    # The window's marker range is a partition the data team can see and backfill.
    assert request.partition_key == bucket_key(markers[1])
    assert instance.has_dynamic_partition("print_os_marker_ranges", request.partition_key)
    assert request.tags["jobstatus/window"] == f"print_os:{marker}-{markers[1]}"
    assert request.run_key.startswith(f"print_os:{marker}-{markers[1]}")

    # Run the requested window; the next tick asks for the following one.
    job = shop.definitions().resolve_job_def("process_print_os")
    run = job.execute_in_process(
        run_config=request.run_config, instance=instance, tags=request.tags
    )
    assert run.success
    (request,) = evaluate(shop, instance, chunk_size=10).run_requests
    assert window_config(request) == {
        "from_marker": markers[1],
        "to_marker": markers[-1],
    }


def test_sensor_launches_nothing_while_a_run_for_the_source_is_in_flight(
    shop: Shop, instance
) -> None:
    shop.print_event("IMP-S", "PRINTED")
    job = shop.definitions().resolve_job_def("process_print_os")
    run = instance.create_run_for_job(
        job,
        run_config=WINDOW_0,
        status=dg.DagsterRunStatus.STARTED,
        tags={"jobstatus/source": "print_os"},
    )
    try:
        result = evaluate(shop, instance)
        assert result.run_requests == []
        assert run.run_id in result.skip_message
    finally:
        instance.report_run_canceled(run)
    assert len(evaluate(shop, instance).run_requests) == 1


def test_sensor_gives_a_failed_window_a_fresh_run_key(shop: Shop, instance) -> None:
    shop.print_event("IMP-S", "PRINTED")
    first = evaluate(shop, instance).run_requests[0]
    job = shop.definitions().resolve_job_def("process_print_os")
    failed = instance.create_run_for_job(
        job, run_config=first.run_config, status=dg.DagsterRunStatus.FAILURE, tags=first.tags
    )
    assert failed.is_finished
    second = evaluate(shop, instance).run_requests[0]
    assert second.tags["jobstatus/window"] == first.tags["jobstatus/window"]
    assert second.run_key != first.run_key


def next_check(tick: Tick) -> float:
    return json.loads(tick.cursor)["next_check"]


def test_sensor_looks_once_per_interval_and_straight_after_a_run_while_catching_up(
    shop: Shop, instance
) -> None:
    """The sensor ticks every daemon loop (5 s) but looks at the source once per interval, except
    while a backlog remains: then the next window launches as soon as the source is free, instead
    of an interval later (bench/README.md §4: catch-up and in-flight skips)."""
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")
    assert sensor.minimum_interval_seconds < SENSOR_LOOP_SECONDS  # a tick every daemon loop
    interval = 30  # build_definitions' default

    # Before the next look is due: skip without looking (no run even though rows are waiting).
    shop.print_event("IMP-C", "PRINTED")
    later = json.dumps({"next_check": time.time() + 20})
    waiting = evaluate(shop, instance, cursor=later)
    assert waiting.run_requests == [] and "in 20 s" in waiting.skip_message

    # Catching up: 5 new rows, chunk 2 -> the window leaves rows behind, so the next look is now.
    for _ in range(4):
        shop.print_event("IMP-C", "PRINTED")
    before = time.time()
    first = evaluate(shop, instance, cursor=None, chunk_size=2)
    assert len(first.run_requests) == 1
    assert before <= next_check(first) <= time.time()
    job = shop.definitions().resolve_job_def("process_print_os")
    request = first.run_requests[0]
    assert job.execute_in_process(run_config=request.run_config, instance=instance).success

    # The window that takes the rest: the next look is one interval away (less half a loop).
    last = evaluate(shop, instance, cursor=first.cursor, chunk_size=10)
    assert len(last.run_requests) == 1
    assert next_check(last) >= time.time() + interval - SENSOR_LOOP_SECONDS
    request = last.run_requests[0]
    assert job.execute_in_process(run_config=request.run_config, instance=instance).success

    # Nothing new: the same interval; an unreadable cursor means "look now".
    idle = evaluate(shop, instance, cursor="not json")
    assert idle.run_requests == [] and "nothing past" in idle.skip_message
    assert next_check(idle) >= time.time() + interval - SENSOR_LOOP_SECONDS


def test_definitions_load(shop: Shop) -> None:
    dg.Definitions.validate_loadable(shop.definitions())


def test_dagster_definitions_validate_on_the_workspace(urls) -> None:
    """The CLI check CI and the UI rely on: the code location loads from workspace.yaml."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from jobstatus_dagster.db import to_sqlalchemy_url

    project = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
        "JOBSTATUS_LOGS_URL": urls.logs,
        "JOBSTATUS_DAGSTER_STORAGE_URL": to_sqlalchemy_url(urls.dagster, "psycopg2"),
    }
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jobstatus" in result.stdout + result.stderr
