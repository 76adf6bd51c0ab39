"""What only the benchmarks need: the server's own statement times, plain tables, the machine.

Databases, the measured `jobstatus` subprocess and process inspection come from the support
package (jobstatus_testkit), shared with the tests and the fault suite.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psutil
import sqlalchemy as sa

from jobstatus_dagster.db import to_sqlalchemy_url
from jobstatus_testkit.databases import Server


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
    """The machine the figures come from (psutil has no CPU model name: /proc/cpuinfo has)."""
    cores = os.cpu_count()
    mem = f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM"
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
