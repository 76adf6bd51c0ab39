"""Latency (issue 6, item 4): from a source row's commit to its job's status being written,
with the Dagster daemon and the sensors running.

    .venv/bin/python -m bench.latency --duration 300          # default sensor interval (30 s)

1. A fresh embedded Postgres; the demo shop at ``--scale``.
2. The services of a production host, each in its own process group: ``jobstatus serve
   code-server`` and ``jobstatus serve daemon`` (``--dev``: the UI too), the daemon loading the
   code location from the one code server (a ``grpc_server`` workspace), with DAGSTER_HOME
   prepared by the CLI's own ``Environment`` (the product's
   dagster.yaml: Postgres storage, queued runs, one run per source) and the sensors RUNNING by
   default, as ``jobstatus dev`` runs them. ``--interval`` sets JOBSTATUS_SENSOR_INTERVAL_SECONDS
   (both sensors); without it the product's default applies.
3. Warm-up: the sensors process the shop's backlog; the measurement starts once both markers
   have reached the newest row and no run is in flight (steady state, nothing queued).
4. The demo simulator (``demo.simulate_tick``) appends one print event and one scan every
   ``1 / --rate`` seconds for ``--duration`` seconds; each row's commit time is the wall clock
   right after its transaction commits.
5. ``processed_source_rows`` (jobmanager; written in the same transaction as the row's audit
   rows and ``jobs.operations``, after the logs commit) is polled every ``--poll`` seconds: the
   first poll that sees a row is when its job's status is visible to a reader. Latency = that
   minus the commit (over-stated by at most one poll).
6. Where the time goes, per row, from the event log of the run that processed it
   (``processed_source_rows.run_id``): commit → run enqueued (waiting for the sensor tick),
   enqueued → starting (the run queue's dequeue), starting → run started (the launcher's new
   process: interpreter, imports, code location), run started → status visible (the run's own
   work). Sensor ticks: their spacing and skips because a run was still in flight.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from bench.common import log, machine_line, print_table
from jobstatus_dagster.processes import interrupt_on_stop_signals, process_group
from jobstatus_dagster.source import SOURCE_NAMES, SOURCES
from jobstatus_testkit.databases import embedded_server, engines
from jobstatus_testkit.processes import free_port

if TYPE_CHECKING:  # dagster is imported late: `--help` and argument errors stay instant
    import dagster as dg

LABELS = {"print_os": "print events", "scanner": "scans"}
SENSORS = {source.name: source.sensor_name for source in SOURCES}
STOP_GRACE_SECONDS = 15.0
JOB_KEY = "(job)"  # the job name, kept beside a run's tags

_SEEN = sa.text(
    "SELECT source_id, run_id FROM processed_source_rows"
    " WHERE source_type = :source AND source_id = ANY(:ids)"
)
_AUDITED = sa.text(
    "SELECT DISTINCT source_id FROM job_status_updates"
    " WHERE source_type = :source AND source_id = ANY(:ids)"
)


@dataclass
class Row:
    """One appended source row: when it committed, when its processed row became visible."""

    source: str
    source_id: int
    committed: float
    seen: float | None = None
    run_id: str | None = None


@dataclass
class RunTimes:
    """Wall-clock stamps (epoch s) of one Dagster run, from its event log. ``starting`` is the
    dequeue: the coordinator emits RUN_STARTING as it hands the run to the launcher."""

    enqueued: float | None = None
    starting: float | None = None
    started: float | None = None
    ended: float | None = None


@dataclass
class Measurement:
    """Everything one appending phase observed."""

    rows: list[Row] = field(default_factory=list)
    audited: dict[str, set[int]] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)  # 1-min load average, every ~10 s
    started: float = 0.0
    stopped: float = 0.0


# ----- the daemon, in its own process group ---------------------------------------------------


@contextmanager
def dagster_daemon(
    dagster_home: Path, env: dict[str, str], log_path: Path, dev: bool
) -> Iterator[subprocess.Popen]:
    """The services of a production host (deploy/): `jobstatus serve code-server` (one `dagster
    code-server start`: sensors are evaluated and runs execute in its children) and `jobstatus
    serve daemon` (`dagster-daemon run` over a `grpc_server` workspace, so no code server is
    respawned every 60 s), with ``dev`` the UI too (`jobstatus serve webserver`). Each in its
    own process group, as ``jobstatus dev`` runs them (the product's supervision): stopped in
    reverse order, the code server with its run workers, on exit, on error and on Ctrl-C alike.
    Yields the daemon's process; all three write to ``log_path``."""
    jobstatus = str(Path(sys.executable).with_name("jobstatus"))
    env = {**env, "JOBSTATUS_CODE_SERVER_HOST": "127.0.0.1"}
    env["JOBSTATUS_CODE_SERVER_PORT"] = str(free_port())
    services = [("code-server", []), ("daemon", [])]
    if dev:
        services.append(("webserver", ["--port", str(free_port())]))
    groups = []
    with log_path.open("w") as out, ExitStack() as stack:
        try:
            for name, args in services:
                group = stack.enter_context(
                    process_group(
                        [jobstatus, "serve", name, *args],
                        cwd=dagster_home,
                        env=env,
                        stdout=out,
                        grace=STOP_GRACE_SECONDS,
                    )
                )
                groups.append((name, group))
            yield dict(groups)["daemon"].popen
        finally:
            stack.close()
            for name, group in groups:
                log(f"{name} group stopped ({group.stopped_by}) in {group.stop_seconds:.1f} s")
                if group.left:
                    print(
                        f"(processes of the {name}'s group still alive: {group.left})",
                        file=sys.stderr,
                    )


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ----- Dagster's records: sensor ticks and run events ------------------------------------------


def sensor_ticks(instance: dg.DagsterInstance, after: float | None = None) -> dict[str, list]:
    """Ticks of our two sensors (newest first), from the instance's schedule storage."""
    from dagster._core.scheduler.instigation import InstigatorType

    ticks: dict[str, list] = {name: [] for name in SENSORS}
    by_name = {sensor: source for source, sensor in SENSORS.items()}
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        source = by_name.get(state.instigator_name)
        if source is not None:
            ticks[source] = list(
                instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after)
            )
    return ticks


def wait_until_caught_up(
    instance: dg.DagsterInstance,
    jobmanager: sa.Engine,
    proc: subprocess.Popen,
    log_path: Path,
    timeout: float,
) -> float:
    """Until the sensors' runs have processed the backlog: both markers at the newest row and no
    run in flight (steady state). Returns the seconds it took."""
    import dagster as dg

    from jobstatus_dagster.pipeline.windows import IN_FLIGHT

    started = time.monotonic()
    with jobmanager.connect() as conn:
        newest = {
            "print_os": conn.execute(sa.text('SELECT max(marker) FROM "print OS"')).scalar(),
            "scanned_codes": conn.execute(
                sa.text("SELECT max(scan_id) FROM scanned_codes")
            ).scalar(),
        }
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({proc.returncode}):\n{_log_tail(log_path)}")
        with jobmanager.connect() as conn:
            markers = dict(
                conn.execute(
                    sa.text("SELECT marker_type, last_processed_id FROM processing_markers")
                ).all()
            )
        done = all(markers.get(kind, 0) >= (top or 0) for kind, top in newest.items())
        idle = not instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT), limit=1)
        if done and idle:
            return time.monotonic() - started
        time.sleep(1.0)
    raise RuntimeError(
        f"the backlog was not processed within {timeout:.0f} s:\n{_log_tail(log_path)}"
    )


def wait_for_runs(instance: dg.DagsterInstance, timeout: float) -> None:
    """Until no run is in flight, so the runs that wrote the rows have their end events."""
    import dagster as dg

    from jobstatus_dagster.pipeline.windows import IN_FLIGHT

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT), limit=1):
            return
        time.sleep(1.0)


def runs_since(instance: dg.DagsterInstance, since: float) -> dict[str, dict[str, str]]:
    """Tags of every run created since ``since`` (epoch s): the sensors' runs of the measurement."""
    from datetime import UTC, datetime

    import dagster as dg

    records = instance.get_run_records(
        dg.RunsFilter(created_after=datetime.fromtimestamp(since, UTC))
    )
    return {
        r.dagster_run.run_id: {**r.dagster_run.tags, JOB_KEY: r.dagster_run.job_name}
        for r in records
    }


def log_runs(tags: dict[str, dict[str, str]], runs: dict[str, RunTimes], since: float) -> None:
    """One line per run (stderr): its window and the legs of its life, for reading the tables."""
    from jobstatus_dagster.pipeline.ops import WINDOW_TAG

    def leg(a: float | None, b: float | None) -> str:
        return f"{b - a:5.1f}" if a is not None and b is not None else "    -"

    for run_id, times in sorted(runs.items(), key=lambda kv: kv[1].enqueued or 0.0):
        mine = tags.get(run_id, {})
        window = mine.get(WINDOW_TAG, mine.get(JOB_KEY, "?"))
        print(
            f"  run {run_id[:8]} {window:28} enqueued at +{leg(since, times.enqueued)} s,"
            f" queued {leg(times.enqueued, times.starting)}, launch"
            f" {leg(times.starting, times.started)}, run {leg(times.started, times.ended)}",
            file=sys.stderr,
        )


def run_times(instance: dg.DagsterInstance, run_ids: set[str]) -> dict[str, RunTimes]:
    """The first enqueued / starting / started / ended event of each run."""
    import dagster as dg

    kinds = {
        dg.DagsterEventType.RUN_ENQUEUED: "enqueued",
        dg.DagsterEventType.RUN_STARTING: "starting",
        dg.DagsterEventType.RUN_START: "started",
        dg.DagsterEventType.RUN_SUCCESS: "ended",
        dg.DagsterEventType.RUN_FAILURE: "ended",
    }
    out = {}
    for run_id in run_ids:
        times = RunTimes()
        for entry in instance.all_logs(run_id, of_type=set(kinds)):
            attr = kinds[entry.dagster_event.event_type]
            if getattr(times, attr) is None:
                setattr(times, attr, entry.timestamp)
        out[run_id] = times
    return out


# ----- appending and polling -------------------------------------------------------------------


def _max_ids(jobmanager: sa.Engine) -> dict[str, int]:
    with jobmanager.connect() as conn:
        return {
            source: conn.execute(sa.text(f"SELECT COALESCE(max({col}), 0) FROM {table}")).scalar()  # noqa: S608
            for source, table, col in ((s.name, s.table, s.id_column) for s in SOURCES)
        }


def _new_ids(jobmanager: sa.Engine, after: dict[str, int]) -> dict[str, list[int]]:
    with jobmanager.connect() as conn:
        return {
            source: list(
                conn.execute(
                    sa.text(f"SELECT {col} FROM {table} WHERE {col} > :a ORDER BY {col}"),  # noqa: S608
                    {"a": after[source]},
                ).scalars()
            )
            for source, table, col in ((s.name, s.table, s.id_column) for s in SOURCES)
        }


def _poll(jobmanager: sa.Engine, pending: dict[str, dict[int, Row]]) -> None:
    """Mark every pending row whose processed row is now visible."""
    with jobmanager.connect() as conn:
        for source, rows in pending.items():
            if not rows:
                continue
            found = conn.execute(_SEEN, {"source": source, "ids": list(rows)}).all()
            now = time.time()
            for source_id, run_id in found:
                row = rows.pop(source_id)
                row.seen, row.run_id = now, run_id


def append_and_watch(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    duration: float,
    rate: float,
    poll: float,
    drain: float,
    seed: int,
) -> Measurement:
    """One print event and one scan every ``1 / rate`` s (the demo simulator), polling for their
    processed rows; then waits up to ``drain`` s for the last ones."""
    import random

    from jobstatus_dagster.demo import simulate_tick

    rng = random.Random(seed)
    measured = Measurement(started=time.time())
    pending: dict[str, dict[int, Row]] = {source: {} for source in SOURCE_NAMES}
    last = _max_ids(jobmanager)
    period = 1.0 / rate
    begin = time.monotonic()
    next_tick, end = begin, begin + duration
    while True:
        now = time.monotonic()
        if now < end and now >= next_tick:
            simulate_tick(jobmanager, logs, rng, print_events=1, scans=1)
            committed = time.time()
            for source, ids in _new_ids(jobmanager, last).items():
                for source_id in ids:
                    row = Row(source, source_id, committed)
                    pending[source][source_id] = row
                    measured.rows.append(row)
                if ids:
                    last[source] = ids[-1]
            next_tick += period
        _poll(jobmanager, pending)
        now = time.monotonic()
        if len(measured.loads) <= (now - begin) / 10:
            measured.loads.append(os.getloadavg()[0])
        if now >= end and (not any(pending.values()) or now >= end + drain):
            break
        wake = min(now + poll, next_tick) if now < end else now + poll
        time.sleep(max(0.0, wake - time.monotonic()))
    measured.stopped = time.time()
    with jobmanager.connect() as conn:
        for source in SOURCE_NAMES:
            ids = [r.source_id for r in measured.rows if r.source == source]
            measured.audited[source] = set(
                conn.execute(_AUDITED, {"source": source, "ids": ids}).scalars()
            )
    return measured


# ----- figures ---------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float | str:
    return float(np.percentile(values, q)) if values else "-"


def _median(values: Sequence[float]) -> float | str:
    return _pct(values, 50)


def latency_table(measured: Measurement, intervals: dict[str, int]) -> list[tuple]:
    rows = []
    for source in SOURCE_NAMES:
        mine = [r for r in measured.rows if r.source == source]
        lat = [r.seen - r.committed for r in mine if r.seen is not None]
        unseen = sum(r.seen is None for r in mine)
        target = intervals[source] + 10
        p95 = _pct(lat, 95)
        met = bool(lat) and not unseen and isinstance(p95, float) and p95 <= target
        rows.append(
            (
                LABELS[source],
                len(mine),
                len(lat),
                len(measured.audited.get(source, ())),
                _median(lat),
                p95,
                max(lat) if lat else "-",
                intervals[source],
                target,
                "yes" if met else "no",
            )
        )
    return rows


def breakdown_table(
    measured: Measurement,
    runs: dict[str, RunTimes],
    tags: dict[str, dict[str, str]],
    ticks: dict[str, list],
) -> list[tuple]:
    """Per source, median / p95 of each leg of a row's latency, and what the sensor did."""
    from jobstatus_dagster.pipeline.ops import SOURCE_TAG

    out = []
    for source in SOURCE_NAMES:
        legs: dict[str, list[float]] = {"sensor": [], "queue": [], "launch": [], "run": []}
        for row in measured.rows:
            times = runs.get(row.run_id or "")
            if row.source != source or row.seen is None or times is None:
                continue
            if times.enqueued is None or times.starting is None or times.started is None:
                continue
            legs["sensor"].append(times.enqueued - row.committed)
            legs["queue"].append(times.starting - times.enqueued)
            legs["launch"].append(times.started - times.starting)
            legs["run"].append(row.seen - times.started)
        source_runs = {r.run_id for r in measured.rows if r.source == source and r.run_id}
        launched = sum(t.get(SOURCE_TAG) == source for t in tags.values())
        walls = [
            runs[r].ended - runs[r].started
            for r in source_runs
            if r in runs and runs[r].ended and runs[r].started
        ]
        window = [t for t in ticks[source] if measured.started <= t.timestamp <= measured.stopped]
        stamps = sorted(t.timestamp for t in window)
        spacing = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        in_flight = sum(
            any(why in (t.skip_reason or "") for why in ("in flight", "queued or running"))
            for t in window
        )
        out.append(
            (
                LABELS[source],
                f"{len(source_runs)} / {launched}",
                *(f"{_cell(_median(v))} / {_cell(_pct(v, 95))}" for v in legs.values()),
                _median(walls),
                len(window),
                _median(spacing),
                in_flight,
            )
        )
    return out


def _cell(value: float | str) -> str:
    return f"{value:.1f}" if isinstance(value, float) else value


# ----- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=2, help="demo scale of the shop")
    parser.add_argument("--duration", type=float, default=300, help="seconds of appending")
    parser.add_argument(
        "--rate", type=float, default=0.5, help="rows per second and source (0.5: one per 2 s)"
    )
    parser.add_argument(
        "--interval", type=int, default=None, help="sensor interval s (default: the product's)"
    )
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    parser.add_argument(
        "--drain", type=float, default=None, help="max s to wait after the last row"
    )
    parser.add_argument(
        "--dev", action="store_true", help="also run the UI (`jobstatus serve webserver`)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp Postgres folder")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.poll <= 0:
        parser.error("--rate, --duration and --poll must be positive")

    from jobstatus_dagster.cli import Environment
    from jobstatus_dagster.config import Settings

    # SIGTERM (timeout, a CI runner) unwinds like Ctrl-C: daemon group and server are stopped.
    interrupt_on_stop_signals()
    with embedded_server(keep=args.keep) as server:
        log(f"demo shop at scale {args.scale}")
        urls, _ = server.demo_shop(args.scale)
        home = server.folder / "home"
        home.mkdir()

        # DAGSTER_HOME and the exported URLs exactly as the CLI prepares them for `jobstatus dev`.
        os.environ.pop("DAGSTER_HOME", None)
        os.environ["JOBSTATUS_HOME"] = str(home)
        if args.interval is not None:
            os.environ["JOBSTATUS_SENSOR_INTERVAL_SECONDS"] = str(args.interval)
            os.environ["JOBSTATUS_SCANNER_INTERVAL_SECONDS"] = str(args.interval)
        env = Environment(
            Settings(
                jobmanager_url=urls.jobmanager,
                logs_url=urls.logs,
                dagster_url=urls.dagster,
                home=home,
            )
        )
        settings = Settings()
        intervals = {
            "print_os": settings.sensor_interval_seconds,
            "scanner": settings.scanner_interval_seconds or settings.sensor_interval_seconds,
        }
        drain = args.drain if args.drain is not None else 2 * max(intervals.values()) + 60
        log_path = server.folder / "daemon.log"
        instance = env.instance()
        try:
            with (
                dagster_daemon(env.dagster_home, dict(os.environ), log_path, args.dev) as proc,
                engines(urls) as (jm, lg),
            ):
                log(f"daemon started (pid {proc.pid}); its sensors process the backlog")
                warm_up = wait_until_caught_up(instance, jm, proc, log_path, timeout=600)
                log(
                    f"backlog processed in {warm_up:.0f} s; appending for {args.duration:g} s"
                    f" at {args.rate:g} rows/s per source; sensor intervals {intervals}"
                )
                measured = append_and_watch(
                    jm, lg, args.duration, args.rate, args.poll, drain, seed=11
                )
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon died:\n{_log_tail(log_path)}")
                log(f"{sum(r.seen is not None for r in measured.rows)} rows processed")
                wait_for_runs(instance, timeout=120)
                tags = runs_since(instance, measured.started)
                runs = run_times(
                    instance, set(tags) | {r.run_id for r in measured.rows if r.run_id}
                )
                log("runs since the first appended row:")
                log_runs(tags, runs, measured.started)
                ticks = sensor_ticks(instance, after=measured.started - 1)
                unseen = sum(r.seen is None for r in measured.rows)
                if unseen:
                    log(f"{unseen} rows not processed within the drain; daemon log tail:")
                    print(_log_tail(log_path, 3000), file=sys.stderr)
                log("stopping the daemon")
        finally:
            instance.dispose()

    mode = "code server, daemon" + (" and UI" if args.dev else "") + " (jobstatus serve)"
    print(f"machine: {machine_line()}")
    print(
        f"shop: demo scale {args.scale}, backlog processed by the sensors first; {mode}; one print"
        f" event and one scan every {1 / args.rate:g} s for {args.duration:g} s; poll {args.poll:g} s"
    )
    loads = measured.loads
    print(
        f"load average (1 min) while measuring: median {_cell(_median(loads))},"
        f" max {max(loads):.1f} on {os.cpu_count()} cores (the machine is shared: compare with"
        " the legs below)"
    )
    print_table(
        "latency: commit to status written",
        [
            "source",
            "rows",
            "processed",
            "with audit rows",
            "median s",
            "p95 s",
            "max s",
            "sensor interval s",
            "target s",
            "met",
        ],
        latency_table(measured, intervals),
    )
    print_table(
        "where the time goes (median / p95 s per row)",
        [
            "source",
            "runs (rows' / all)",
            "commit→enqueued",
            "queued",
            "launch",
            "run→visible",
            "run wall s",
            "ticks",
            "tick spacing s",
            "in-flight skips",
        ],
        breakdown_table(measured, runs, tags, ticks),
    )


if __name__ == "__main__":
    main()
