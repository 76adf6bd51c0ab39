"""Process supervision and liveness, on psutil: the one place the product looks at OS processes.

Two callers need it. ``jobstatus dev`` (and the latency benchmark, which starts the daemon the
same way) runs Dagster in a process group of its own, so that its webserver, daemon, code
servers and run workers all stop with it. The stale-run check asks whether the process that was
running a run is still that process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO

import psutil

# A process's start time is derived from the boot time, which Linux gives to the second.
CLOCK_SLACK_SECONDS = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ProcessState(Enum):
    ALIVE = "alive"
    GONE = "no longer exists"
    EXITED = "has exited"
    REUSED = "no longer exists (its pid now belongs to a younger process)"
    UNKNOWN = "unknown"


def process_state(pid: int, running_at: float) -> ProcessState:
    """Whether the process with ``pid`` on this host is the one that was running at
    ``running_at`` (epoch seconds): a pid taken by a younger process is not it."""
    try:
        proc = psutil.Process(pid)
        status = proc.status()
        started_at = proc.create_time()
    except psutil.ZombieProcess:
        return ProcessState.EXITED
    except psutil.NoSuchProcess:
        return ProcessState.GONE
    except psutil.Error:  # access denied, or a platform psutil cannot read
        return ProcessState.UNKNOWN
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):  # killed, not yet reaped
        return ProcessState.EXITED
    if started_at > running_at + CLOCK_SLACK_SECONDS:
        return ProcessState.REUSED
    return ProcessState.ALIVE


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group. A container's init may never reap the
    zombies a killed group leaves, so a signal to the group alone would still say alive."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to see
    return members


def _raise_keyboard_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_stop_signals() -> None:
    """Ctrl-C and SIGTERM (a service manager, ``timeout``) both raise KeyboardInterrupt, so
    clean-up runs either way. Also undoes an ignored SIGINT (a script's background job): an
    ignored signal stays ignored in every child, and the group would not stop on it."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_when_parent_exits() -> None:
    """SIGTERM to this process when its parent exits (Linux): `make run` killed, or stopped
    through a shell that does not pass the signal on, would leave `jobstatus dev` orphaned with
    everything it started; with this it stops as if the signal had reached it."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent was already gone before the request
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Group:
    """A command running as the leader of its own process group, and how the group ended."""

    popen: subprocess.Popen
    stopped_by: str = ""
    stop_seconds: float = 0.0
    left: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float) -> None:
        """SIGINT to the whole group, as Ctrl-C in a terminal sends it; SIGKILL to whatever is
        left after ``grace`` seconds."""
        started = time.monotonic()
        self.stopped_by = "already gone"
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            self.stopped_by = sig.name
            if self._wait_until_empty(wait):
                break
        if self.popen.poll() is None:
            self.popen.wait(timeout=5)
        self.stop_seconds = time.monotonic() - started
        self.left = group_members(self.pid)

    def _wait_until_empty(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not group_members(self.pid):
                return True
            time.sleep(0.2)
        return False


@contextmanager
def process_group(
    command: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdout: IO | None = None,
    grace: float = 30.0,
) -> Iterator[Group]:
    """``command`` in a new process group, stopped with all its descendants on exit, on error
    and on Ctrl-C alike; a second Ctrl-C during the stop does not cut it short."""
    group = Group(
        subprocess.Popen(  # noqa: S603 - our own venv's executables
            list(command),
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
    )
    try:
        yield group
    finally:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            group.stop(grace)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
