"""The product's process supervision: what `jobstatus dev` starts stops with it, all of it."""

import os
import signal
import sys
import time
from pathlib import Path

from jobstatus_dagster.processes import group_members, process_group

# A leader with two children, one of which ignores SIGINT (as a stuck run worker may). That
# child says when its handler is in place by creating IGNORING in its working folder: before,
# a SIGINT would still stop it.
IGNORING = "ignoring-sigint"
FAMILY = (
    "import signal, subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "subprocess.Popen([sys.executable, '-c',"
    " 'import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN);"
    f' open("{IGNORING}", "w").close(); time.sleep(300)\'])\n'
    "time.sleep(300)\n"
)


def _wait_for_members(pgid: int, count: int) -> list[int]:
    deadline = time.monotonic() + 30
    while len(members := group_members(pgid)) < count:
        assert time.monotonic() < deadline, members
        time.sleep(0.1)
    return members


def _wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_a_process_group_stops_with_every_descendant(tmp_path: Path) -> None:
    with process_group([sys.executable, "-c", FAMILY], cwd=tmp_path, grace=2.0) as group:
        members = _wait_for_members(group.pid, 3)
        _wait_for_file(tmp_path / IGNORING)
        assert os.getpgid(group.pid) == group.pid  # a group of its own, not ours
        assert os.getpgid(os.getpid()) != group.pid
    assert group.popen.returncode is not None
    assert group_members(group.pid) == [] and group.left == []
    # SIGINT stopped the leader and one child; the child ignoring it needed the SIGKILL.
    assert group.stopped_by == "SIGKILL", group
    for pid in members:
        assert pid not in group_members(group.pid)


def test_a_group_that_obeys_sigint_is_not_killed(tmp_path: Path) -> None:
    sleeper = "import time; time.sleep(300)"
    with process_group([sys.executable, "-c", sleeper], cwd=tmp_path, grace=20.0) as group:
        _wait_for_members(group.pid, 1)
    assert group.stopped_by == "SIGINT" and group.stop_seconds < 20.0, group
    assert group.popen.returncode != -signal.SIGKILL


def test_the_group_is_stopped_when_the_block_fails(tmp_path: Path) -> None:
    sleeper = "import time; time.sleep(300)"
    try:
        with process_group([sys.executable, "-c", sleeper], cwd=tmp_path, grace=20.0) as group:
            _wait_for_members(group.pid, 1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert group_members(group.pid) == []
