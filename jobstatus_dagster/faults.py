"""Deterministic crash points for the fault suite (R18): off unless JOBSTATUS_CRASH_AT is set.

``JOBSTATUS_CRASH_AT=after_logs_commit`` makes the process SIGKILL itself at that point, exactly
as a power cut would; nothing after it runs, no cleanup, no rollback message to the server.
"""

import os
import signal

CRASH_POINTS = (
    "after_load",
    "after_resolve",
    "after_logs_commit",
    "before_jobmanager_commit",
    "after_jobmanager_commit",
)


def crash_point(name: str) -> None:
    if os.environ.get("JOBSTATUS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


_injected: set[str] = set()


def transient_point(name: str) -> None:
    """``JOBSTATUS_TRANSIENT_ONCE=name``: the first pass here in this process raises the error a
    dropped connection gives, so the op's retry policy can be seen to cure it."""
    if os.environ.get("JOBSTATUS_TRANSIENT_ONCE") == name and name not in _injected:
        import psycopg

        _injected.add(name)
        raise psycopg.OperationalError(f"injected transient error at {name}")
