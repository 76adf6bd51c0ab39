"""The print-OS sensor: skip reasons, windows, run keys, one run per source at a time (§6)."""

from dataclasses import dataclass

import dagster as dg

from jobstatus_dagster.pipeline.partitions import bucket_key
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
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


def evaluate(shop: Shop, instance: dg.DagsterInstance, **processing) -> Tick:
    """One tick, as the daemon would evaluate it (the sensor function with its resources)."""
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")
    resources = {
        "jobmanager": PostgresDatabase(url=shop.urls.jobmanager),
        "processing": ProcessingSettings(**processing),
    }
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return Tick([], result.skip_message)
    return Tick(list(result.run_requests), None)


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
