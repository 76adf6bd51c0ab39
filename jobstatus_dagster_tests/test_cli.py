"""The `jobstatus` command as a user runs it: real processes, real databases, real kills (R18)."""

import json
import os
import signal
import subprocess
from dataclasses import replace

import pytest

from jobstatus_dagster.db import migrate
from jobstatus_dagster.faults import CRASH_POINTS
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import T0, Shop
from jobstatus_testkit.cli import JOBSTATUS, cli_env, run_cli
from jobstatus_testkit.databases import fresh_urls
from jobstatus_testkit.processes import free_port, port_open, processes_with


@pytest.fixture(scope="module")
def control_state(pg_admin_uri, tmp_path_factory) -> dict:
    """The undisturbed result of processing the small backlog."""
    urls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    with Shop(urls) as shop:
        fill_small_backlog(shop)
        result = run_cli(urls, tmp_path_factory.mktemp("home"), "process", "--source", "both")
        assert result.returncode == 0, result.stderr[-3000:]
        return shop.state()


def test_cli_migrate_process_status(pg_admin_uri, tmp_path, control_state) -> None:
    urls = fresh_urls(pg_admin_uri)
    first = run_cli(urls, tmp_path, "migrate", "--baseline")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "0001_tracking" in first.stdout
    again = run_cli(urls, tmp_path, "migrate", "--baseline")
    assert again.stdout.splitlines() == ["jobmanager: up to date", "logs: up to date"]

    with Shop(urls) as shop:
        fill_small_backlog(shop)
        done = run_cli(urls, tmp_path, "process", "--source", "both")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "No Dagster daemon serves this instance: processing here" in done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[0].startswith("print_os: ") and "marker 114" in lines[0]
        assert lines[1].startswith("scanner: ") and "marker 6" in lines[1]
        assert shop.state() == control_state

        before = shop.snapshot()
        second = run_cli(urls, tmp_path, "process")
        assert second.stdout.split("\n")[:2] == ["print_os: nothing new", "scanner: nothing new"]
        assert shop.snapshot() == before

        status = run_cli(urls, tmp_path, "status", "7001_1", "--json")
        body = json.loads(status.stdout)
        # v1 and v2 both fully printed; RL1 was coated, the job barcode cut, RL2 backscored.
        assert body["current_status"] == {
            "print": True,
            "coating": True,
            "kiss_cut": True,
            "backscore": True,
        }
        assert {v["version_tag"] for v in body["versions"]} == {"1", "2"}
        assert body["update_history"][0]["update_id"] > body["update_history"][-1]["update_id"]
        unknown = run_cli(urls, tmp_path, "status", "0_0")
        assert unknown.returncode != 0 and "unknown job" in unknown.stderr


def test_cli_process_runs_are_in_the_dagster_instance(pg_admin_uri, tmp_path) -> None:
    import dagster as dg

    from jobstatus_dagster.instance import instance_overrides

    urls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    with Shop(urls) as shop:
        fill_small_backlog(shop)
    assert run_cli(urls, tmp_path, "process", "--source", "print_os").returncode == 0
    with dg.instance_for_test(
        temp_dir=str(tmp_path), overrides=instance_overrides(urls.dagster)
    ) as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"jobstatus/trigger": "cli"}))
        assert [r.job_name for r in runs] == ["process_print_os"]
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
        assert runs[0].tags["jobstatus/window"] == "print_os:0-114"


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_r18_kill_at_each_stage_then_rerun_gives_the_undisturbed_state(
    pg_admin_uri, tmp_path, control_state, crash_at
) -> None:
    urls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    with Shop(urls) as shop:
        fill_small_backlog(shop)
        for source in ("print_os", "scanner"):
            killed = run_cli(
                urls, tmp_path, "process", "--source", source, JOBSTATUS_CRASH_AT=crash_at
            )
            assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        rerun = run_cli(urls, tmp_path, "process", "--source", "both")
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert shop.state() == control_state
        duplicates = shop.scalar(
            shop.jm,
            "SELECT count(*) FROM (SELECT 1 FROM job_status_updates GROUP BY source_type,"
            " source_id, job_id, version_tag, operation HAVING count(*) > 1) d",
        )
        assert duplicates == 0


def test_r21_cli_backfill_reports_each_window_and_changes_nothing(pg_admin_uri, tmp_path) -> None:
    urls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    with Shop(urls) as shop:
        fill_small_backlog(shop)
        assert run_cli(urls, tmp_path, "process").returncode == 0
        before, marker = shop.snapshot(), shop.marker()
        result = run_cli(
            urls, tmp_path, "backfill", "--source", "print_os", "--from", "0", "--to", "104"
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # No daemon serves the instance: no backfill to submit, the windows run here instead.
        assert "No Dagster daemon serves this instance: processing here" in result.stderr
        assert result.stdout.startswith("print_os:0-104 run ") and ", ok" in result.stdout
        assert shop.snapshot() == before and shop.marker() == marker


BIGINT_MIN = -(2**63)


def test_r21_cli_backfill_from_the_bigint_minimum_processes_the_rows(
    pg_admin_uri, tmp_path
) -> None:
    """The late-row lookback below the window's start saturates at the bigint minimum instead
    of failing every such backfill with 'bigint out of range' (R3, R21)."""
    urls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    with Shop(urls) as shop:
        jobs = [shop.add_job(), shop.add_job()]
        for job, marker in zip(jobs, (BIGINT_MIN + 1, -5), strict=True):
            shop.add_job_operation(job, "1")
            shop.map_files(f"{job}-I", [f"FILE_1_Labex_{job}_1"])
            shop.print_event(f"{job}-I", "PRINTED", marker=marker, at=T0)
        result = run_cli(
            urls, tmp_path, "backfill", "--source", "print_os", "--from", str(BIGINT_MIN),
            "--to", "0",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "bigint out of range" not in result.stderr
        for job in jobs:
            assert shop.job_print_row(job, "1")["status"] == "completed", job
            assert shop.job_operations_json(job) == {"print": True}


def test_database_unavailable_is_one_line_and_exit_2(pg_admin_uri, tmp_path) -> None:
    """A database that is down (or restarting) mid-way: a clear error, not a traceback (R18)."""
    urls = fresh_urls(pg_admin_uri)
    gone = urls.jobmanager.replace(urls.jobmanager.split("?")[0].rsplit("/", 1)[1], "no_such_db")
    result = run_cli(replace(urls, jobmanager=gone), tmp_path, "process", "--source", "print_os")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "print_os: database unavailable" in result.stderr
    assert "no_such_db" in result.stderr
    assert "Traceback" not in result.stderr


def test_dev_shows_a_line_per_run_guards_its_ui_and_stops_everything_on_sigterm(
    pg_admin_uri, tmp_path
) -> None:
    """`jobstatus dev` from a script's background (SIGINT ignored, inherited by its children)
    stopped by a service manager's SIGTERM: its code server, daemon, webserver and their
    children all exit, none is left orphaned (code servers once were; docs/decisions.md).
    Meanwhile its console shows a line per finished run (no Dagster DEBUG event, no library
    warning), and its UI refuses the cross-site GET mutation of issue 20 and serves its page."""
    import re
    import time

    import httpx

    urls = fresh_urls(pg_admin_uri)
    home = tmp_path / "home"
    ports = [free_port(), free_port()]
    out, err = tmp_path / "dev.out", tmp_path / "dev.err"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` does in a script
    try:
        with out.open("w") as stdout, err.open("w") as stderr:
            dev = subprocess.Popen(
                [JOBSTATUS, "dev", "--port", str(ports[0]), "--api-port", str(ports[1])]
                + ["--simulate-every", "0"],
                env=cli_env(urls, home, JOBSTATUS_SENSOR_INTERVAL_SECONDS="5"),
                stdout=stdout,
                stderr=stderr,
            )
    finally:
        signal.signal(signal.SIGINT, previous)

    def ours() -> list[str]:
        return processes_with(str(home), in_environ=True)

    run_line = re.compile(r"^\d\d:\d\d:\d\d print_os:0-\d+ SUCCESS: \d+ rows read, ", re.M)
    try:
        deadline = time.monotonic() + 240
        while not (port_open(ports[0]) and run_line.search(out.read_text())):
            assert dev.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(1)
        # jobstatus dev, the embedded server, the code server and its code process, the
        # daemon, the webserver
        assert len(ours()) >= 6, ours()
        ui = f"http://127.0.0.1:{ports[0]}"
        evil = httpx.get(
            f"{ui}/graphql",
            params={"query": "mutation{launchPartitionBackfill(backfillParams:{}){__typename}}"},
            headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert evil.status_code == 403 and "refused" in evil.text
        assert httpx.get(f"{ui}/", headers={"Host": "evil.example"}).status_code == 403
        page = httpx.get(f"{ui}/", headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})
        assert page.status_code == 200 and "<html" in page.text.lower()
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=120)
        deadline = time.monotonic() + 20
        while ours() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ours() == []
    finally:
        if dev.poll() is None:
            dev.kill()
    console = out.read_text() + err.read_text()
    assert " - DEBUG - " not in console and "Warning" not in console, console[-3000:]
    assert (home / "logs" / "code-server.log").read_text().count(" - DEBUG - ") > 0


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_make_run_stopped_leaves_no_process(pg_admin_uri, tmp_path, stop) -> None:
    """`make run` stopped by SIGTERM (make passes it on to `jobstatus dev`), or killed (it
    cannot: `jobstatus dev` sees its parent gone): everything `jobstatus dev` started stops."""
    import sys
    import time
    from pathlib import Path

    urls = fresh_urls(pg_admin_uri)
    home = tmp_path / "home"
    ports = [free_port(), free_port()]
    make = subprocess.Popen(
        ["make", "-C", str(Path(__file__).resolve().parent.parent), "-o", ".venv/.installed"]
        + ["run", f"BIN={Path(sys.executable).parent}"]
        + [f"DEV_ARGS=--port {ports[0]} --api-port {ports[1]} --simulate-every 0"],
        env=cli_env(urls, home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ours() -> list[str]:
        return processes_with(str(home), in_environ=True)

    try:
        deadline = time.monotonic() + 180
        while not (len(ours()) >= 6 and port_open(ports[0])):
            assert make.poll() is None, "make run exited on its own"
            assert time.monotonic() < deadline, ours()
            time.sleep(1)
        make.send_signal(stop)
        make.wait(timeout=60)
        deadline = time.monotonic() + 120
        while ours() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ours() == []
    finally:
        if make.poll() is None:
            make.kill()
        for line in ours():
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
