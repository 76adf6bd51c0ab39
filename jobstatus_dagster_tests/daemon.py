"""A real `dagster-daemon run` serving a test instance: the run queue dequeues, the backfill
daemon launches ranges, run workers execute in their own processes."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import dagster as dg
import yaml

from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.instance import DAGSTER_YAML
from jobstatus_dagster.pipeline.queue import (
    BACKFILL_DAEMON,
    LOCATION_NAME,
    RUN_QUEUE_DAEMON,
    daemon_serves,
)
from jobstatus_testkit.cli import cli_env

DAGSTER_DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
PROJECT = Path(__file__).resolve().parent.parent


def daemon_env(urls: DatabaseUrls, home: Path) -> dict[str, str]:
    """What `jobstatus dev` gives the daemon: the databases, and dagster.yaml in DAGSTER_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    return {
        **cli_env(urls, home),
        "DAGSTER_HOME": str(home),
        "JOBSTATUS_DAGSTER_STORAGE_URL": to_sqlalchemy_url(urls.dagster, "psycopg2"),
        "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]),
    }


@contextmanager
def running_daemon(
    urls: DatabaseUrls, home: Path, instance: dg.DagsterInstance
) -> Iterator[subprocess.Popen]:
    """The daemon over the test code location (named like workspace.yaml's), until it beats."""
    env = daemon_env(urls, home)
    workspace = home / "workspace.yaml"
    entry = {"module_name": "jobstatus_dagster_tests.daemon_defs", "location_name": LOCATION_NAME}
    entry["working_directory"] = str(PROJECT)
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": entry}]}))
    log = (home / "daemon.log").open("w")
    daemon = subprocess.Popen(  # noqa: S603 - our own venv's dagster-daemon
        [DAGSTER_DAEMON, "run", "-w", str(workspace)],
        env=env,
        cwd=home,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its group: the daemon, its code server, the run workers
    )
    try:
        deadline = time.monotonic() + 180
        while not (
            daemon_serves(instance, RUN_QUEUE_DAEMON) and daemon_serves(instance, BACKFILL_DAEMON)
        ):
            assert daemon.poll() is None, (home / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the daemon never beat"
            time.sleep(0.5)
        yield daemon
    finally:
        stop_group(daemon)
        log.close()


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started, SIGKILL if it lingers."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
