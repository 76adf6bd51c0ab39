"""Deterministic crash points for the fault suite (SPEC R18): off unless JOBSTATUS_CRASH_AT is set.

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
