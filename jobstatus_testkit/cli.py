"""The `jobstatus` command as a separate OS process against given databases, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_testkit.processes import PeakRss

JOBSTATUS = str(Path(sys.executable).with_name("jobstatus"))


def cli_env(urls: DatabaseUrls, home: Path, **extra: str) -> dict[str, str]:
    """This process's environment pointed at ``urls``, with ``home`` as JOBSTATUS_HOME (so each
    group of processes has its own DAGSTER_HOME) and ``extra`` settings on top."""
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


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def run_cli(
    urls: DatabaseUrls, home: Path, *args: str, timeout: float = 900, **env: str
) -> Completed:
    """`jobstatus <args>` to its end; ``env`` adds settings (JOBSTATUS_CRASH_AT=… arms a kill)."""
    result = subprocess.run(
        [JOBSTATUS, *args],
        env=cli_env(urls, home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Completed(result.returncode, result.stdout, result.stderr)


class Started:
    """A `jobstatus` process running in the background. Its output goes to unnamed temporary
    files, never to pipes: a pipe nobody reads fills up (64 kB of Dagster log lines) and blocks
    the process in a logging call, so a kill "at a random moment" would always land on that
    same blocked write."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self._out = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in output()
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in output()
        self.popen = subprocess.Popen(args, env=env, stdout=self._out, stderr=self._err, text=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        self.popen.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end (TimeoutExpired as Popen's), then its stdout and stderr."""
        self.popen.wait(timeout)
        return self.output()

    def output(self) -> tuple[str, str]:
        """Its stdout and stderr so far; closes the files (later calls give empty text)."""
        texts = []
        for f in (self._out, self._err):
            if f.closed:
                texts.append("")
                continue
            f.seek(0)
            texts.append(f.read())
            f.close()
        return texts[0], texts[1]


def start_cli(urls: DatabaseUrls, home: Path, *args: str, **env: str) -> Started:
    return Started([JOBSTATUS, *args], cli_env(urls, home, **env))


@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def measure_cli(urls: DatabaseUrls, home: Path, *args: str, **env: str) -> Measured:
    """`jobstatus <args>` to its end, with its wall time and its own peak RSS; raises when it
    fails (a benchmark's figures mean nothing then)."""
    home.mkdir(parents=True, exist_ok=True)
    started = Started([JOBSTATUS, *args], cli_env(urls, home, **env))
    begun = time.perf_counter()
    peak = PeakRss(started.pid)
    returncode = started.wait()
    seconds = time.perf_counter() - begun
    stdout, stderr = started.output()
    run = Measured(seconds, peak.stop() / 1024, returncode, stdout, stderr)
    if run.returncode != 0:
        raise RuntimeError(
            f"jobstatus {' '.join(args)} failed ({run.returncode}):\n{run.stderr[-3000:]}"
        )
    return run
