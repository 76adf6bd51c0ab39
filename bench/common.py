"""Shared plumbing of the benchmarks: an embedded Postgres in a temp folder, fresh databases,
the demo shop, cloned databases, the `jobstatus process` CLI as a measured subprocess, tables.

Nothing here is used by the product; the product is only ever driven through its CLI.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from jobstatus_dagster.db import (
    DatabaseUrls,
    database_url,
    ensure_databases,
    migrate,
    start_embedded,
    to_sqlalchemy_url,
)

JOBSTATUS = str(Path(sys.executable).with_name("jobstatus"))


@dataclass
class Server:
    """The embedded server of one benchmark, in its own temp folder."""

    folder: Path
    admin_uri: str
    handle: object

    def fresh_urls(self, tag: str = "") -> DatabaseUrls:
        suffix = f"{tag}{uuid.uuid4().hex[:6]}"
        names = (f"jobmanager_{suffix}", f"logs_{suffix}", f"dagster_{suffix}")
        ensure_databases(self.admin_uri, names)
        return DatabaseUrls(*(database_url(self.admin_uri, n) for n in names))

    def clone(self, urls: DatabaseUrls, tag: str = "") -> DatabaseUrls:
        """Copies of jobmanager and logs (CREATE DATABASE … TEMPLATE), a fresh dagster db."""
        suffix = f"{tag}{uuid.uuid4().hex[:6]}"
        names = (f"jobmanager_{suffix}", f"logs_{suffix}", f"dagster_{suffix}")
        engine = sa.create_engine(to_sqlalchemy_url(self.admin_uri), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for new, old in zip(names[:2], (urls.jobmanager, urls.logs), strict=True):
                    source = sa.engine.make_url(old).database
                    conn.execute(sa.text(f'CREATE DATABASE "{new}" TEMPLATE "{source}"'))
                conn.execute(sa.text(f'CREATE DATABASE "{names[2]}"'))
        finally:
            engine.dispose()
        return DatabaseUrls(*(database_url(self.admin_uri, n) for n in names))


@contextmanager
def embedded_server(keep: bool = False) -> Iterator[Server]:
    """An embedded PostgreSQL in a new temp folder, removed afterwards unless ``keep``."""
    folder = Path(tempfile.mkdtemp(prefix="jobstatus-bench-"))
    handle = start_embedded(folder)
    try:
        yield Server(folder, handle.get_uri("postgres"), handle)
    finally:
        stop = getattr(handle, "stop", None) or getattr(handle, "cleanup", None)
        if stop is not None:
            try:
                stop()
            except Exception as err:  # the folder goes anyway
                print(f"(stopping the embedded server: {err})", file=sys.stderr)
        if keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def demo_shop(server: Server, scale: int, seed: int = 7) -> tuple[DatabaseUrls, float]:
    """Fresh databases, baseline + migrations, the demo shop at ``scale``; seconds taken."""
    from jobstatus_dagster.demo import generate_shop

    urls = server.fresh_urls("b")
    migrate(urls, baseline=True)
    started = time.perf_counter()
    with engines(urls) as (jm, lg):
        generate_shop(jm, lg, scale=scale, seed=seed)
    return urls, time.perf_counter() - started


@contextmanager
def engines(urls: DatabaseUrls) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    lg = sa.create_engine(to_sqlalchemy_url(urls.logs))
    try:
        yield jm, lg
    finally:
        jm.dispose()
        lg.dispose()


def scalar(url: str, query: str, **params: object):
    engine = sa.create_engine(to_sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query), params).scalar()
    finally:
        engine.dispose()


_DURATION = re.compile(r"^\S+ \S+ \S+ \[\d+\] (\S+) LOG:  duration: ([0-9.]+) ms")


class StatementTime:
    """Server time of every statement, per database, read from the server's own log.

    Enabled, it turns on ``log_min_duration_statement = 0`` (with the database in each line)
    for the whole server; ``measure`` sums the durations logged inside it. Logging every
    statement costs the product a few per cent of its wall time, so runs measured this way are
    not the throughput figures. Parse, bind and execute are logged apart; their sum is the
    statement's server time. Disabled, it does nothing and measures nothing.
    """

    def __init__(self, server: Server, enabled: bool) -> None:
        self.log_file = server.folder / "pgdata" / "log"
        self.admin_uri = server.admin_uri
        self.enabled = enabled
        if enabled:
            self._settings("0")

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        """Seconds per database name of the statements logged inside the block (on exit)."""
        totals: dict[str, float] = {}
        offset = self.log_file.stat().st_size if self.enabled else 0
        yield totals
        if self.enabled:
            totals.update(self._since(offset))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No logging inside (the row-at-a-time reference: its many small statements would
        slow)."""
        if self.enabled:
            self._settings("-1")
        try:
            yield
        finally:
            if self.enabled:
                self._settings("0")

    def _settings(self, duration: str, prefix: str = "'%m [%p] %d '") -> None:
        engine = sa.create_engine(to_sqlalchemy_url(self.admin_uri), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f"ALTER SYSTEM SET log_min_duration_statement = {duration}"))
                conn.execute(sa.text(f"ALTER SYSTEM SET log_line_prefix = {prefix}"))
                conn.execute(sa.text("SELECT pg_reload_conf()"))
        finally:
            engine.dispose()
        time.sleep(0.5)  # the reload reaches every backend at its next command

    def _since(self, offset: int) -> dict[str, float]:
        totals: dict[str, float] = {}
        with self.log_file.open("rb") as log_file:
            log_file.seek(offset)
            for raw in log_file:
                match = _DURATION.match(raw.decode("utf-8", "replace"))
                if match:
                    totals[match[1]] = totals.get(match[1], 0.0) + float(match[2]) / 1000
        return totals


def database_name(url: str) -> str:
    return sa.engine.make_url(to_sqlalchemy_url(url)).database


@dataclass
class CliRun:
    seconds: float
    peak_rss_mib: float
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    urls: DatabaseUrls, home: Path, *args: str, env: dict[str, str] | None = None
) -> CliRun:
    """`jobstatus <args>` as its own process; wall time and that process's own peak RSS
    (wait4 gives the child's rusage, not the sum of all children)."""
    full_env = {
        **os.environ,
        "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
        "JOBSTATUS_LOGS_URL": urls.logs,
        "JOBSTATUS_DAGSTER_URL": urls.dagster,
        "JOBSTATUS_HOME": str(home),
        **(env or {}),
    }
    full_env.pop("DAGSTER_HOME", None)
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([JOBSTATUS, *args], env=full_env, stdout=out, stderr=err)
        peak = _PeakRss(proc.pid)
        _, status, _usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        run = CliRun(seconds, peak.stop() / 1024, proc.returncode, out.read(), err.read())
    if run.returncode != 0:
        raise RuntimeError(
            f"jobstatus {' '.join(args)} failed ({run.returncode}):\n{run.stderr[-3000:]}"
        )
    return run


class _PeakRss:
    """The child's own peak RSS (VmHWM, KiB), polled while it runs.

    Not wait4's ru_maxrss: on Linux a child's recorded peak starts from its parent's RSS at
    fork/exec, so it reported the bench process's size whenever that was larger (414/530 MiB
    "product" peaks measured that way were the bench's own memory).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kib = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _read(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self.kib = max(self.kib, int(line.split()[1]))
        except (OSError, ValueError):
            return False
        return True

    def _poll(self) -> None:
        while not self._done.is_set() and self._read():
            self._done.wait(0.05)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.kib


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table (the scripts' output, and what the smoke test looks for)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(f"\n== {title} ==")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in cells:
        print(" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(flush=True)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_line() -> str:
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
        mem = f"{mem_kib / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        mem = "? RAM"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return f"{cpu}, {cores} cores, {mem}, Python {platform.python_version()}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
