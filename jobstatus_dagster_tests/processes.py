"""Running `jobstatus` as separate OS processes against test databases."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
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


def live_processes() -> Iterator[tuple[int, bytes, bytes]]:
    """(pid, cmdline, environ) of every process this user may read, from /proc; NULs kept."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield (
                int(entry.name),
                (entry / "cmdline").read_bytes(),
                (entry / "environ").read_bytes(),
            )
        except OSError:
            continue  # gone meanwhile


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


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
