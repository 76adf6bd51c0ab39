"""A real `dagster-daemon run` serving a test instance: the run queue dequeues, the backfill
daemon launches ranges, run workers execute in their own processes. For the tests and the fault
suite alike, in the production shape (deploy/, `jobstatus serve`): one `dagster code-server
start` for the code location and the daemon loading it through a `grpc_server` workspace, so no
code server is respawned every 60 s. Each runs in a process group of its own (the product's
``process_group``), the code server stopped with its code process and run workers."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psutil

from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.instance import DAGSTER_YAML, grpc_workspace
from jobstatus_dagster.pipeline.queue import (
    BACKFILL_DAEMON,
    LOCATION_NAME,
    RUN_QUEUE_DAEMON,
    daemon_serves,
)
from jobstatus_dagster.processes import process_group
from jobstatus_testkit.cli import cli_env
from jobstatus_testkit.processes import free_port, port_open

DAGSTER = str(Path(sys.executable).with_name("dagster"))
DAGSTER_DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
PROJECT = Path(__file__).resolve().parent.parent
# The code location the daemon serves: the product's definitions without sensors and schedule.
DAEMON_DEFS = "jobstatus_testkit.daemon_defs"


def daemon_env(urls: DatabaseUrls, home: Path, **extra: str) -> dict[str, str]:
    """What `jobstatus dev` gives the daemon: the databases, and dagster.yaml in DAGSTER_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    return {
        **cli_env(urls, home, **extra),
        "DAGSTER_HOME": str(home),
        "JOBSTATUS_DAGSTER_STORAGE_URL": to_sqlalchemy_url(urls.dagster, "psycopg2"),
        "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]),
    }


@contextmanager
def running_daemon(
    urls: DatabaseUrls, home: Path, instance: dg.DagsterInstance, **extra_env: str
) -> Iterator[subprocess.Popen]:
    """The daemon over the test code location (named like workspace.yaml's), served by its own
    code server, until it beats; both process groups stopped on exit (the daemon first).
    ``extra_env``: more variables for the code server and the daemon, and so for the run
    workers (e.g. the processing settings)."""
    env = daemon_env(urls, home, **extra_env)
    port = free_port()
    code_server = [
        DAGSTER,
        "code-server",
        "start",
        "--module-name",
        DAEMON_DEFS,
        "--working-directory",
        str(PROJECT),
        "--location-name",
        LOCATION_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    workspace = grpc_workspace(home, "127.0.0.1", port)
    with (
        (home / "code-server.log").open("w") as code_log,
        process_group(code_server, cwd=home, env=env, stdout=code_log) as code_group,
    ):
        deadline = time.monotonic() + 180
        while not port_open(port):  # it listens once the code has loaded
            assert code_group.popen.poll() is None, (home / "code-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the code server never listened"
            time.sleep(0.2)
        with (
            (home / "daemon.log").open("w") as log,
            process_group(
                [DAGSTER_DAEMON, "run", "-w", str(workspace)], cwd=home, env=env, stdout=log
            ) as group,
        ):
            while not (
                daemon_serves(instance, RUN_QUEUE_DAEMON)
                and daemon_serves(instance, BACKFILL_DAEMON)
            ):
                assert group.popen.poll() is None, (home / "daemon.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the daemon never beat"
                time.sleep(0.5)
            # The production shape: the daemon loads the location from the code server and
            # starts no code server of its own.
            assert psutil.Process(group.pid).children(recursive=True) == []
            yield group.popen
