"""Looking at OS processes from outside: which are still running, how much memory one took,
which ports are free. Built on psutil, like the product's own supervision."""

from __future__ import annotations

import socket
import threading

import psutil


def processes_with(text: str, *, in_environ: bool = False, command: str = "") -> list[str]:
    """``pid: command line`` of every live process whose command line (or, with ``in_environ``,
    environment) holds ``text`` and whose command line holds ``command``. Zombies do not count:
    a container's init may never reap them."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or ())
            where = (
                " ".join(f"{k}={v}" for k, v in proc.environ().items()) if in_environ else cmdline
            )
        except psutil.Error:
            continue  # gone meanwhile, or not ours to read
        if text in where and command in cmdline:
            found.append(f"{proc.pid}: {cmdline[:120]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class PeakRss:
    """A child's own peak RSS in KiB, polled while it runs.

    The kernel's high-water mark (VmHWM) where psutil exposes it (Linux ``memory_full_info``
    does not; ``/proc/<pid>/status`` does), else the largest RSS seen. Not wait4's ru_maxrss:
    on Linux a child's recorded peak starts from its parent's RSS at fork/exec, so it reports
    the measuring process's size whenever that is larger.
    """

    def __init__(self, pid: int) -> None:
        self.kib = 0
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _read(self) -> bool:
        try:
            self.kib = max(self.kib, _high_water_kib(self._pid))
        except (psutil.Error, OSError, ValueError):
            return False
        return True

    def _poll(self) -> None:
        while not self._done.is_set() and self._read():
            self._done.wait(0.05)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.kib


def _high_water_kib(pid: int) -> int:
    if psutil.LINUX:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return psutil.Process(pid).memory_info().rss // 1024
