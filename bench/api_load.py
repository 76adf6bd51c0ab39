"""An API no client can wear down (issue 19): bursts of processing requests against `jobstatus
api` served as its own process, with a real `dagster-daemon` running the runs.

    .venv/bin/python -m bench.api_load

A demo shop is generated and processed; then, each time after the live shop added new rows:

1. a burst of ``--burst`` (50) simultaneous ``POST /api/process-status-updates`` (wait 60 s):
   how many runs were queued for how many distinct windows (a duplicate window is a run whose
   window another run of the burst already had), and when the last answer came;
2. ``--abandoned`` (30) requests with ``wait: 600`` whose clients hang up after
   ``--hang-up`` (3) seconds.

Throughout, a reader asks ``GET /api/job-status/{id}`` every 0.1 s (latency p50/p99 per phase),
and the ``dagster`` database's commit rate and new-session rate (``pg_stat_database``
``xact_commit``, ``sessions``) are sampled every second: idle before, during each phase, while
the abandoned requests' runs finish, and for ``--after`` seconds once they have (nothing was
asked any more: the rate should be back to idle). Figures: bench/README.md ("API under
bursts").
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import httpx
import sqlalchemy as sa

from bench.common import log, machine_line, print_table
from jobstatus_dagster.db import to_sqlalchemy_url
from jobstatus_dagster.definitions import build_definitions
from jobstatus_dagster.demo import generate_shop, simulate_tick
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.pipeline.ops import TRIGGER_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.runner import process_source
from jobstatus_dagster.pipeline.windows import FINISHED
from jobstatus_testkit.cli import start_cli
from jobstatus_testkit.daemon import running_daemon
from jobstatus_testkit.databases import embedded_server, engines
from jobstatus_testkit.serving import free_port

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHUNK = "20"  # rows per window: a burst's new rows make several windows


class DatabaseRates:
    """Commits and new sessions per second of one database, sampled every second."""

    def __init__(self, admin_uri: str, database: str) -> None:
        self.engine = sa.create_engine(to_sqlalchemy_url(admin_uri), isolation_level="AUTOCOMMIT")
        self.database = database
        self.samples: list[tuple[float, int, int]] = []  # (time, xact_commit, sessions)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                row = conn.execute(
                    sa.text(
                        "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = :d"
                    ),
                    {"d": self.database},
                ).one()
                self.samples.append((time.monotonic(), int(row[0]), int(row[1])))
                self._stop.wait(1.0)

    def between(self, start: float, end: float) -> tuple[float, float]:
        """(commits/s, sessions/s) over the samples inside [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan")
        (t0, c0, s0), (t1, c1, s1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0), (s1 - s0) / (t1 - t0)

    def __enter__(self) -> DatabaseRates:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


class Reader:
    """A client reading a job's status every 0.1 s; latencies with the time they were taken."""

    def __init__(self, base: str, jobs: list[str]) -> None:
        self.base, self.jobs = base, jobs
        self.samples: list[tuple[float, float, int]] = []  # (time, ms, status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        rng = random.Random(3)
        with httpx.Client(base_url=self.base, headers=AUTH, timeout=120) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(f"/api/job-status/{rng.choice(self.jobs)}").status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append(
                    (time.monotonic(), (time.perf_counter() - started) * 1000, status)
                )
                self._stop.wait(0.1)

    def between(self, start: float, end: float) -> tuple[int, float, float, int]:
        """(reads, p50 ms, p99 ms, non-200 answers) inside [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return 0, float("nan"), float("nan"), 0
        ms = sorted(s[1] for s in inside)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return len(ms), statistics.median(ms), p99, sum(s[2] != 200 for s in inside)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def burst(base: str, count: int, wait: int, hang_up: float | None) -> list[str]:
    """``count`` processing requests released together; each one's outcome."""
    start = threading.Barrier(count)

    def one(_: int) -> str:
        start.wait()
        try:
            answer = httpx.post(
                f"{base}/api/process-status-updates",
                json={"source": "both", "wait": wait},
                headers=AUTH,
                timeout=hang_up if hang_up is not None else wait + 120,
            )
        except httpx.TimeoutException:
            return "hung up"
        return str(answer.status_code)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def api_windows(instance: dg.DagsterInstance, since: set[str]) -> tuple[int, int, int]:
    """(runs, distinct windows, duplicate runs) the API queued after the runs in ``since``."""
    runs = [
        run
        for run in instance.get_runs(dg.RunsFilter(tags={TRIGGER_TAG: "api"}))
        if run.run_id not in since
    ]
    windows = Counter(run.tags.get(WINDOW_TAG) for run in runs)
    return len(runs), len(windows), sum(n - 1 for n in windows.values())


def wait_until_healthy(base: str, api) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/api/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"api did not start: {api.output()}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--abandoned", type=int, default=30)
    parser.add_argument("--hang-up", type=float, default=3.0)
    parser.add_argument("--new-rows", type=int, default=60, help="print events added per phase")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds measured at rest")
    parser.add_argument(
        "--after", type=float, default=20.0, help="seconds measured once the runs finished"
    )
    args = parser.parse_args(argv)
    rng = random.Random(11)
    with embedded_server() as server:
        urls = server.migrated("apiload")
        dagster_db = sa.engine.make_url(to_sqlalchemy_url(urls.dagster)).database
        home = Path(tempfile.mkdtemp(prefix="home-", dir=server.folder))
        (home / "instance").mkdir()
        with (
            engines(urls) as (jm, logs),
            dg.instance_for_test(
                temp_dir=str(home / "instance"), overrides=instance_overrides(urls.dagster)
            ) as instance,
        ):
            generate_shop(jm, logs)
            defs = build_definitions(urls.jobmanager, urls.logs)
            for source in ("print_os", "scanner"):
                process_source(defs, instance, source, trigger="bench")
            with jm.connect() as conn:
                jobs = list(conn.execute(sa.text("SELECT job_id FROM jobs LIMIT 200")).scalars())
            log("demo shop generated and processed")
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            settings = {"JOBSTATUS_CHUNK_SIZE": CHUNK}
            with running_daemon(urls, home / "daemon", instance, **settings):
                api = start_cli(
                    urls,
                    home / "api",
                    "api",
                    "--port",
                    str(port),
                    JOBSTATUS_API_TOKEN=TOKEN,
                    JOBSTATUS_API_READ_TOKEN=TOKEN,
                    **settings,
                )
                try:
                    wait_until_healthy(base, api)
                    with (
                        DatabaseRates(server.admin_uri, dagster_db) as rates,
                        Reader(base, jobs) as reader,
                    ):
                        phases = []
                        t0 = time.monotonic()
                        time.sleep(args.idle)
                        phases.append(("idle, before", t0, time.monotonic(), ""))

                        simulate_tick(jm, logs, rng, print_events=args.new_rows, scans=20)
                        before = {run.run_id for run in instance.get_runs()}
                        t1 = time.monotonic()
                        outcomes = burst(base, args.burst, 60, None)
                        t2 = time.monotonic()
                        queued, distinct, duplicates = api_windows(instance, before)
                        answers = Counter(outcomes)
                        phases.append(
                            (
                                f"{args.burst} requests at once",
                                t1,
                                t2,
                                f"{queued} runs, {distinct} windows, {duplicates} duplicate;"
                                f" answers {dict(sorted(answers.items()))};"
                                f" last answer after {t2 - t1:.1f} s",
                            )
                        )
                        burst_row = (queued, distinct, duplicates, t2 - t1)

                        simulate_tick(jm, logs, rng, print_events=args.new_rows, scans=20)
                        before = {run.run_id for run in instance.get_runs()}
                        t3 = time.monotonic()
                        outcomes = burst(base, args.abandoned, 600, args.hang_up)
                        t4 = time.monotonic()  # every client has hung up
                        queued, distinct, duplicates = api_windows(instance, before)
                        phases.append(
                            (
                                f"{args.abandoned} waits, clients gone after {args.hang_up:g} s",
                                t3,
                                t4,
                                f"{queued} runs, {distinct} windows, {duplicates} duplicate;"
                                f" outcomes {dict(Counter(outcomes))}",
                            )
                        )
                        # Their runs go on (the work was asked for); then nothing should.
                        queued_ids = set(before)
                        while any(
                            run.status not in FINISHED
                            for run in instance.get_runs(dg.RunsFilter(tags={TRIGGER_TAG: "api"}))
                            if run.run_id not in queued_ids
                        ):
                            time.sleep(0.5)
                        t5 = time.monotonic()
                        phases.append(("clients gone, their runs finishing", t4, t5, ""))
                        time.sleep(args.after)
                        phases.append(
                            (f"next {args.after:g} s (runs finished)", t5, time.monotonic(), "")
                        )
                    rows = []
                    for name, start, end, note in phases:
                        commits, sessions = rates.between(start, end)
                        reads, p50, p99, bad = reader.between(start, end)
                        rows.append(
                            (name, f"{end - start:.1f}", commits, sessions, reads, p50, p99, bad)
                        )
                        if note:
                            log(f"{name}: {note}")
                    print_table(
                        "API under bursts: the dagster database and a reader meanwhile",
                        (
                            "phase",
                            "s",
                            "commits/s",
                            "sessions/s",
                            "reads",
                            "read p50 ms",
                            "p99 ms",
                            "non-200",
                        ),
                        rows,
                    )
                    queued, distinct, duplicates, last = burst_row
                    print_table(
                        f"{args.burst} simultaneous POST /api/process-status-updates",
                        ("runs queued", "distinct windows", "duplicate runs", "last answer s"),
                        [(queued, distinct, duplicates, f"{last:.1f}")],
                    )
                finally:
                    api.kill()
    print(f"machine: {machine_line()}")


if __name__ == "__main__":
    main()
