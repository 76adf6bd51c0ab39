"""Running `jobstatus` as separate OS processes against test databases."""

import os
import subprocess
import sys
from pathlib import Path

from jobstatus_dagster.db import DatabaseUrls

JOBSTATUS = str(Path(sys.executable).with_name("jobstatus"))


def cli_env(urls: DatabaseUrls, home: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
        "JOBSTATUS_LOGS_URL": urls.logs,
        "JOBSTATUS_DAGSTER_URL": urls.dagster,
        "JOBSTATUS_HOME": str(home),
        **extra,
    }
    env.pop("DAGSTER_HOME", None)
    return env


def cli(urls: DatabaseUrls, home: Path, *args: str, crash_at: str | None = None):
    extra = {"JOBSTATUS_CRASH_AT": crash_at} if crash_at else {}
    return subprocess.run(
        [JOBSTATUS, *args],
        env=cli_env(urls, home, **extra),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def start_cli(urls: DatabaseUrls, home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [JOBSTATUS, *args],
        env=cli_env(urls, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
