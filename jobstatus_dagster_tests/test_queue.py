"""One run per source whoever launched it, and the CLI on a daemon-served instance: a real
`dagster-daemon` dequeues the runs, launches the backfills, and run workers execute them."""

import re
import time
from pathlib import Path

import dagster as dg
import pytest

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.pipeline import queue
from jobstatus_dagster.pipeline.windows import PlannedRun
from jobstatus_dagster.source import source_named
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.cli import run_cli

BACKFILL_WAIT = 240  # the backfill daemon looks every 30 s: once to launch, once to finish


@pytest.fixture(scope="module", autouse=True)
def backlog(shop: Shop) -> None:
    fill_small_backlog(shop)


def span(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """From the run's first step starting to its last step ending, from its event log."""
    times = [
        record.event_log_entry.timestamp
        for record in instance.get_records_for_run(run_id).records
        if record.event_log_entry.dagster_event is not None
        and record.event_log_entry.dagster_event.event_type
        in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS)
    ]
    return min(times), max(times)


def test_a_ui_backfill_and_sensor_runs_of_the_same_source_never_run_at_once(
    shop: Shop, instance: dg.DagsterInstance, urls: DatabaseUrls, daemon: None, tmp_path: Path
) -> None:
    """`jobstatus backfill` submits the asset page's kind of backfill (__ASSET_JOB runs, one per
    marker range); the moment its run is created, two sensor-style runs of the same source join
    the queue. The source's pool lets one run at a time: no two runs' steps overlap."""
    result = run_cli(
        urls, tmp_path, "backfill", "--source", "print_os", "--from", "0", "--to", "114"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No Dagster daemon" not in result.stderr
    match = re.search(r"^print_os: backfill (\w+) submitted: ", result.stdout)
    assert match, result.stdout
    assert "1 marker range(s) (000000000000-000000010000)" in result.stdout
    backfill_id = match[1]
    assert backfill_id in {b.backfill_id for b in instance.get_backfills()}

    deadline = time.monotonic() + BACKFILL_WAIT
    while not queue.backfill_runs(instance, backfill_id):
        assert time.monotonic() < deadline, "the backfill daemon never launched the range"
        time.sleep(0.05)
    job = shop.definitions().resolve_job_def("process_print_os")
    sensor_run_ids = [
        queue.submit_run(
            instance,
            job,
            run_config=planned.run_config(),
            tags=planned.tags("sensor"),
            partition_key=planned.partition_key,
            partitions=source_named("print_os").partitions,
        )
        for planned in (
            PlannedRun("print_os", 0, 114, "new rows"),
            PlannedRun("print_os", 114, 114, "late rows"),
        )
    ]

    done, (backfill_run,) = queue.wait_for_backfill(instance, backfill_id, BACKFILL_WAIT)
    sensor_runs = queue.wait_for_runs(instance, sensor_run_ids, 120)
    assert done
    runs = [backfill_run, *sensor_runs]
    assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 3
    assert backfill_run.job_name == "__ASSET_JOB"
    assert backfill_run.tags["dagster/partition"] == "000000000000-000000010000"
    spans = sorted(span(instance, run.run_id) for run in runs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert shop.marker("print_os") == 114


def test_cli_process_with_a_daemon_goes_through_the_queue(
    shop: Shop, instance: dg.DagsterInstance, urls: DatabaseUrls, daemon: None, tmp_path: Path
) -> None:
    result = run_cli(urls, tmp_path, "process", "--source", "scanner")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "No Dagster daemon" not in result.stderr
    assert result.stdout.startswith("scanner: 1 run(s), 6 rows read, ")
    assert "marker 6" in result.stdout
    (run,) = instance.get_runs(
        dg.RunsFilter(tags={"jobstatus/source": "scanner", "jobstatus/trigger": "cli"})
    )
    assert run.status == dg.DagsterRunStatus.SUCCESS
    kinds = {
        record.event_log_entry.dagster_event_type
        for record in instance.get_records_for_run(run.run_id).records
    }
    assert {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING} <= kinds  # queued
    assert shop.marker("scanned_codes") == 6
