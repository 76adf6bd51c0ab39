"""A real `dagster-daemon run` serving a test instance: the run queue dequeues, the backfill
daemon launches ranges, run workers execute in their own processes. For the tests and the fault
suite alike; it runs in a process group of its own (the product's ``process_group``), stopped
with its code server and run workers."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from jobstatus_dagster.processes import process_group
from jobstatus_testkit.cli import cli_env

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
    """The daemon over the test code location (named like workspace.yaml's), until it beats;
    its whole process group stopped on exit. ``extra_env``: more variables for the daemon and
    so for its run workers (e.g. the processing settings)."""
    env = daemon_env(urls, home, **extra_env)
    workspace = home / "workspace.yaml"
    entry = {"module_name": DAEMON_DEFS, "location_name": LOCATION_NAME}
    entry["working_directory"] = str(PROJECT)
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": entry}]}))
    with (
        (home / "daemon.log").open("w") as log,
        process_group(
            [DAGSTER_DAEMON, "run", "-w", str(workspace)], cwd=home, env=env, stdout=log
        ) as group,
    ):
        deadline = time.monotonic() + 180
        while not (
            daemon_serves(instance, RUN_QUEUE_DAEMON) and daemon_serves(instance, BACKFILL_DAEMON)
        ):
            assert group.popen.poll() is None, (home / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the daemon never beat"
            time.sleep(0.5)
        yield group.popen
