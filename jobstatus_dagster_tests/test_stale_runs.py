"""A run whose worker was killed never blocks its source: the sensor sees it and requests the
fail_stalled_runs job, which fails it.

Real processes, real kills (``JOBSTATUS_CRASH_AT`` SIGKILLs ``jobstatus process`` mid-run), a
real Dagster instance on Postgres. Re-running the dead run's window is safe (R18).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.scheduler.instigation import TickStatus

from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.instance import DAGSTER_YAML, TickLogs
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.stale_runs import (
    HOST_TAG,
    PID_TAG,
    ProcessState,
    process_state,
)
from jobstatus_dagster.pipeline.windows import IN_FLIGHT, PlannedRun
from jobstatus_dagster.source import source_named
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.cli import run_cli, start_cli


@pytest.fixture(scope="module", autouse=True)
def backlog(shop: Shop) -> None:
    fill_small_backlog(shop)


@pytest.fixture(autouse=True)
def nothing_left_in_flight(instance: dg.DagsterInstance) -> Iterator[None]:
    """A failing test must not leave a run that blocks the next one's source."""
    yield
    for run in instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT)):
        instance.report_run_canceled(run)


def tick(
    shop: Shop, instance: dg.DagsterInstance, source: str, stale_run_seconds: int = 600
) -> dg.SensorResult:
    """One evaluation of the source's sensor, as the daemon would run it; then the
    fail_stalled_runs run it requests, if any, executed as the queue would."""
    sensor = shop.definitions().resolve_sensor_def(f"{source}_sensor")
    processing = ProcessingSettings(stale_run_seconds=stale_run_seconds)
    resources = {"jobmanager": PostgresDatabase(url=shop.urls.jobmanager), "processing": processing}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    for request in result.run_requests or []:
        if request.job_name == "fail_stalled_runs":
            recovery = shop.definitions().resolve_job_def("fail_stalled_runs")
            assert "jobstatus/source" not in request.tags  # never queued behind the stalled run
            outcome = recovery.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                tags=request.tags,
                resources={"processing": processing},
            )
            assert outcome.success
    return result


def windows(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.job_name != "fail_stalled_runs"]


def recoveries(result: dg.SensorResult) -> list[dg.RunRequest]:
    return [r for r in result.run_requests or [] if r.job_name == "fail_stalled_runs"]


def runs_of(instance: dg.DagsterInstance, source: str, trigger: str) -> list[dg.DagsterRun]:
    return instance.get_runs(
        dg.RunsFilter(tags={"jobstatus/source": source, "jobstatus/trigger": trigger})
    )


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    (record,) = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    return record.event_log_entry.dagster_event.message


def kill_mid_run(urls: DatabaseUrls, home: Path, instance, source: str) -> dg.DagsterRun:
    """`jobstatus process` SIGKILLed after loading its window: its run is left STARTED."""
    killed = run_cli(urls, home, "process", "--source", source, JOBSTATUS_CRASH_AT="after_load")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run,) = runs_of(instance, source, "cli")
    assert run.status == dg.DagsterRunStatus.STARTED
    assert run.tags[HOST_TAG] == socket.gethostname()
    return run


def dead_pid() -> int:
    child = subprocess.Popen(["true"])  # noqa: S607 - coreutils
    child.wait()
    return child.pid


def job(shop: Shop, source: str):
    return shop.definitions().resolve_job_def(source_named(source).job_name)


# ----- the sensor ---------------------------------------------------------------------------
def test_sensor_fails_the_run_of_a_killed_process_and_launches_its_window(
    shop: Shop, instance: dg.DagsterInstance, urls: DatabaseUrls, tmp_path: Path
) -> None:
    dead = kill_mid_run(urls, tmp_path, instance, "print_os")
    pid = int(dead.tags[PID_TAG])
    assert process_state(pid, time.time()) is ProcessState.GONE

    result = tick(shop, instance, "print_os")

    # Failed at once (the process is provably gone), with the reason, by the job the tick
    # requested, and no longer in flight.
    assert len(recoveries(result)) == 1
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert failure_message(instance, dead.run_id) == (
        f"run worker gone: process {pid} on {socket.gethostname()} no longer exists"
    )
    # The tick planned past the dead run's window; the next one, the dead run now finished,
    # requests that window again.
    result = tick(shop, instance, "print_os")
    assert recoveries(result) == []
    request = windows(result)[0]
    assert request.tags["jobstatus/window"] == dead.tags["jobstatus/window"]
    assert request.tags["jobstatus/window"].startswith("print_os:0-")
    # The relaunched window repairs whatever the killed run left (R18).
    relaunched = job(shop, "print_os").execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags=request.tags,
        partition_key=request.partition_key,
    )
    assert relaunched.success
    for request in windows(result)[1:]:
        assert (
            job(shop, "print_os")
            .execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags)
            .success
        )
    assert shop.marker("print_os") == 114
    skip = tick(shop, instance, "print_os")
    assert skip.skip_reason.skip_message == "nothing past the print_os marker 114"


def test_sensor_fails_a_run_with_no_known_process_only_after_the_quiet_threshold(
    shop: Shop, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon-launched run whose code server died with it: no process to look at, so it is
    stale once it has recorded nothing for JOBSTATUS_STALE_RUN_SECONDS."""
    shop.process(instance, "print_os")
    orphan = instance.create_run_for_job(
        job(shop, "print_os"),
        run_config=PlannedRun("print_os", 0, 0, "test").run_config(),
        status=dg.DagsterRunStatus.STARTING,
        tags={"jobstatus/source": "print_os", "jobstatus/trigger": "sensor"},
    )
    result = tick(shop, instance, "print_os")  # default threshold: 600 s
    assert result.skip_reason.skip_message == (
        f"1 run(s) for print_os already queued or running, up to marker {shop.marker('print_os')}"
    )
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.STARTING

    time.sleep(1.5)
    result = tick(shop, instance, "print_os", stale_run_seconds=1)

    (recovery,) = recoveries(result)
    assert orphan.run_id in recovery.run_key
    assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    message = failure_message(instance, orphan.run_id)
    assert message.startswith("run worker gone: no event for ")
    assert message.endswith(" s in STARTING, past JOBSTATUS_STALE_RUN_SECONDS=1")
    assert windows(result) == []
    assert tick(shop, instance, "print_os").skip_reason.skip_message == (
        f"nothing past the print_os marker {shop.marker('print_os')}"
    )


def test_a_live_process_is_never_failed_however_quiet_its_run(
    shop: Shop,
    instance: dg.DagsterInstance,
    urls: DatabaseUrls,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A `jobstatus process` waiting on the marker row lock (R19) records nothing, yet is alive:
    its run stays in flight and the sensor keeps skipping."""
    shop.process(instance, "print_os")
    shop.print_event("B-I1", "PRINTED", marker=shop.marker("print_os") + 1)
    monkeypatch.setenv("JOBSTATUS_STALE_RUN_SECONDS", "1")
    with shop.jm.connect() as holder:
        tx = holder.begin()
        holder.execute(
            sa.text("SELECT 1 FROM processing_markers WHERE marker_type = 'print_os' FOR UPDATE")
        )
        waiting = start_cli(urls, tmp_path, "process", "--source", "print_os")
        try:
            run = wait_for_quiet_run(instance, "print_os", quiet_seconds=2.0)
            assert int(run.tags[PID_TAG]) == waiting.pid

            result = tick(shop, instance, "print_os", stale_run_seconds=1)

            assert recoveries(result) == []
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        finally:
            tx.rollback()
        assert waiting.wait(timeout=120) == 0, waiting.output()[1][-2000:]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS


def wait_for_quiet_run(
    instance: dg.DagsterInstance, source: str, quiet_seconds: float
) -> dg.DagsterRun:
    """The CLI's STARTED run of the source, once it has recorded nothing for a while."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = instance.get_runs(
            dg.RunsFilter(
                tags={"jobstatus/source": source, "jobstatus/trigger": "cli"},
                statuses=[dg.DagsterRunStatus.STARTED],
            )
        )
        if started:
            (last,) = instance.get_records_for_run(
                started[0].run_id, limit=1, ascending=False
            ).records
            if time.time() - last.event_log_entry.timestamp > quiet_seconds:
                return started[0]
        time.sleep(0.2)
    raise AssertionError("the CLI's run never went quiet")


def test_worker_tags_inherited_by_a_reexecution_do_not_count(
    shop: Shop, instance: dg.DagsterInstance
) -> None:
    """UI re-execution copies the parent's tags: its host/pid name the parent's process, not
    its own, so a dead pid there proves nothing; a run of its own with that pid is gone."""
    gone = {HOST_TAG: socket.gethostname(), PID_TAG: str(dead_pid())}
    tags = {"jobstatus/source": "scanner", **gone}
    config = PlannedRun("scanner", 0, 0, "test").run_config()
    parent = instance.create_run_for_job(
        job(shop, "scanner"), run_config=config, status=dg.DagsterRunStatus.FAILURE, tags=tags
    )
    child = instance.create_run_for_job(
        job(shop, "scanner"),
        run_config=config,
        status=dg.DagsterRunStatus.STARTED,
        tags=tags,
        parent_run_id=parent.run_id,
        root_run_id=parent.run_id,
    )
    try:
        result = tick(shop, instance, "scanner")
        assert recoveries(result) == []
        assert instance.get_run_by_id(child.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        instance.report_run_canceled(child)

    own = instance.create_run_for_job(
        job(shop, "scanner"), run_config=config, status=dg.DagsterRunStatus.STARTED, tags=tags
    )
    assert len(recoveries(tick(shop, instance, "scanner"))) == 1
    assert instance.get_run_by_id(own.run_id).status == dg.DagsterRunStatus.FAILURE
    assert failure_message(instance, own.run_id) == (
        f"run worker gone: process {gone[PID_TAG]} on {gone[HOST_TAG]} no longer exists"
    )


# ----- the processes themselves -------------------------------------------------------------
def test_process_state_tells_alive_gone_exited_and_reused_pids() -> None:
    assert process_state(os.getpid(), running_at=time.time()) is ProcessState.ALIVE
    # This process started after that moment: its pid cannot be the one that was running then.
    assert process_state(os.getpid(), running_at=time.time() - 86_400) is ProcessState.REUSED
    assert process_state(dead_pid(), running_at=time.time()) is ProcessState.GONE
    zombie = subprocess.Popen(["sleep", "60"])  # noqa: S607 - coreutils
    try:
        os.kill(zombie.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while process_state(zombie.pid, time.time()) is ProcessState.ALIVE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert process_state(zombie.pid, time.time()) is ProcessState.EXITED  # not yet reaped
    finally:
        zombie.wait()


# ----- Dagster's own run monitoring ---------------------------------------------------------
# dagster.yaml's run_monitoring section (see its comments): runs take seconds, so a run stuck
# starting 3 min or running 1 h is dead; the DefaultRunLauncher cannot resume (attempts 0).
RUN_MONITORING = {
    "enabled": True,
    "start_timeout_seconds": 180,
    "cancel_timeout_seconds": 180,
    "max_runtime_seconds": 3600,
    "max_resume_run_attempts": 0,
    "poll_interval_seconds": 60,
    "free_slots_after_run_end_seconds": 60,
}


def test_dagster_yaml_enables_run_monitoring(
    urls: DatabaseUrls,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon fails runs stuck starting or running too long; the DefaultRunLauncher cannot
    resume runs, so a resume attempt count other than 0 would refuse to load."""
    declared = yaml.safe_load(DAGSTER_YAML.read_text())
    assert declared["run_monitoring"] == RUN_MONITORING
    shutil.copyfile(DAGSTER_YAML, tmp_path / "dagster.yaml")
    monkeypatch.setenv("JOBSTATUS_DAGSTER_STORAGE_URL", to_sqlalchemy_url(urls.dagster, "psycopg2"))
    with dg.DagsterInstance.from_config(str(tmp_path)) as configured:
        # Dagster itself reads the file that way (the daemon would run with these values).
        assert configured.run_monitoring_enabled
        assert "MONITORING" in configured.get_required_daemon_types()
        assert {
            "start_timeout_seconds": configured.run_monitoring_start_timeout_seconds,
            "cancel_timeout_seconds": configured.run_monitoring_cancel_timeout_seconds,
            "max_runtime_seconds": configured.run_monitoring_max_runtime_seconds,
            "max_resume_run_attempts": configured.run_monitoring_max_resume_run_attempts,
            "poll_interval_seconds": configured.run_monitoring_poll_interval_seconds,
            "free_slots_after_run_end_seconds": configured.run_monitoring_settings[
                "free_slots_after_run_end_seconds"
            ],
        } == {k: v for k, v in RUN_MONITORING.items() if k != "enabled"}
        # bench/latency.py: the queue is checked every second, dequeues on threads.
        coordinator = configured.run_coordinator
        assert coordinator.dequeue_interval_seconds == 1 and coordinator.dequeue_use_threads
        # One run per source (docs/rules.md §6): a pool per source, one run at a time, held in the queue.
        pools = configured.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "run"
        # Sensor tick logs kept for the UI, no stdout/stderr capture of runs: no tail and
        # watcher processes per run, whose teardown once held a finished run 60 s (test_instance).
        assert isinstance(configured.compute_log_manager, TickLogs)
        # No newsletter dialog; no freshness daemon scanning assets that have no policy.
        assert not configured.nux_enabled and not configured.freshness_enabled
        # A sensor looks every 30 s: a day of skipped ticks is enough history.
        retention = configured.get_tick_retention_settings(InstigatorType.SENSOR)
        # Ticks that launched kept 30 days, failed and started ones 90 (dagster.yaml, retention).
        assert {status: retention[status] for status in TickStatus} == {
            TickStatus.SKIPPED: 1,
            TickStatus.SUCCESS: 30,
            TickStatus.FAILURE: 90,
            TickStatus.STARTED: 90,
        }
    # Instances built in code (tests, bench, faults) read the same file.
    assert isinstance(instance.compute_log_manager, TickLogs)
