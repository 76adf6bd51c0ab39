"""The integration API under a large history (issue 14): read latencies, CSV export rate and
memory, webhook delivery throughput.

    .venv/bin/python -m bench.integration --audit-rows 1000000 --jobs 100000

Fresh databases from the support package; the history is inserted set-based with
``generate_series`` (not through the pipeline): ``--jobs`` jobs with three operations' state and
a print state each, and ``--audit-rows`` audit rows spread over them, with as many changes in
the change feed (R25). Then ``jobstatus api``
runs as its own process (so its peak RSS is the server's alone) and is measured over HTTP:
``GET /api/job-status/{id}`` and ``GET /api/jobs`` (pages of 100 at random cursors, plain and
filtered) p50/p99, the feed's full CSV export (rows/s and the server's peak RSS), and the
delivery of ``--deliveries`` webhooks to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil
import sqlalchemy as sa

from bench.common import log, machine_line, print_table
from jobstatus_dagster.pipeline.webhooks import WebhookDelivery, deliver_due
from jobstatus_testkit.cli import start_cli
from jobstatus_testkit.databases import embedded_server, engines
from jobstatus_testkit.serving import free_port

TOKEN = "bench-token"

HISTORY_SQL = [
    """INSERT INTO jobs (job_id, job_name, operations)
       SELECT g || '_' || (g % 97), 'job ' || g,
              '{"print": true, "coating": true, "kiss_cut": false}'::jsonb
       FROM generate_series(1, :jobs) g""",
    """INSERT INTO job_operation_state (job_id, operation, value, status, version_tag,
           precedence, event_time, source_type, source_id, notes)
       SELECT g || '_' || (g % 97), op, op <> 'kiss_cut',
              CASE WHEN op = 'print' THEN (ARRAY['completed', 'partial', 'aborted'])[g % 3 + 1]
                   WHEN op = 'coating' THEN 'completed' END,
              '1', 1, timestamp '2026-11-01' + g * interval '1 second', 'scanner', g, 'bench'
       FROM generate_series(1, :jobs) g, unnest(ARRAY['print', 'coating', 'kiss_cut']) op
       WHERE op <> 'kiss_cut' OR g % 2 = 0""",
    """INSERT INTO job_print_state (job_id, version_tag, status, printed_count, aborted_count,
           total_count, highest, notes, event_time, source_id)
       SELECT g || '_' || (g % 97), '1', 'completed', 3, 0, 3, true, '3 of 3 files printed',
              timestamp '2026-11-01' + g * interval '1 second', g
       FROM generate_series(1, :jobs) g""",
    """INSERT INTO job_status_updates (source_type, source_id, job_id, version_tag, operation,
           status, printed_count, aborted_count, total_count, applied, notes, event_time,
           processed_at, run_id, marker)
       SELECT CASE WHEN n % 3 = 0 THEN 'scanner' ELSE 'print_os' END, n,
              (n % :jobs + 1) || '_' || ((n % :jobs + 1) % 97), '1',
              CASE WHEN n % 3 = 0 THEN 'coating' ELSE 'print' END, 'completed', 1, 0, 3, true,
              '1 of 3 files printed', timestamp '2026-11-01' + n * interval '10 ms',
              timestamp '2026-11-02' + n * interval '10 ms', 'bench-run', n
       FROM generate_series(1, :audit) n""",
    # the change feed (R25): one change per audit row, as a history of re-processing makes
    """INSERT INTO job_status_changes (change_id, job_id, version_tag, operation, event, status,
           printed_count, aborted_count, total_count, notes, event_time, source_type,
           source_id, source_marker, recorded_at, run_id)
       SELECT n, (n % :jobs + 1) || '_' || ((n % :jobs + 1) % 97), '1',
              CASE WHEN n % 3 = 0 THEN 'coating' ELSE 'print' END, 'status', 'completed', 1, 0,
              3, '1 of 3 files printed', timestamp '2026-11-01' + n * interval '10 ms',
              CASE WHEN n % 3 = 0 THEN 'scanner' ELSE 'print_os' END, n, n,
              timestamp '2026-11-02' + n * interval '10 ms', 'bench-run'
       FROM generate_series(1, :audit) n""",
    "ANALYZE",
]


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(client: httpx.Client, paths: list[str]) -> list[float]:
    times = []
    for path in paths:
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
    return times


class PeakRss:
    """Samples a process tree's RSS every 20 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss + sum(
                    c.memory_info().rss for c in self.process.children(recursive=True)
                )
            except psutil.Error:
                rss = 0
            self.peak = max(self.peak, rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Sink(BaseHTTPRequestHandler):
    count = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        Sink.count += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit-rows", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--deliveries", type=int, default=5000)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    with embedded_server() as server:
        urls = server.migrated("integration")
        with engines(urls) as (jm, _):
            started = time.perf_counter()
            with jm.begin() as conn:
                for statement in HISTORY_SQL:
                    conn.execute(sa.text(statement), {"jobs": args.jobs, "audit": args.audit_rows})
            log(
                f"history: {args.audit_rows} audit rows, {args.jobs} jobs"
                f" in {time.perf_counter() - started:.1f} s"
            )
            port = free_port()
            home = Path(tempfile.mkdtemp(prefix="home-", dir=server.folder))
            api = start_cli(
                urls,
                home,
                "api",
                "--port",
                str(port),
                JOBSTATUS_API_TOKEN=TOKEN,
                JOBSTATUS_API_READ_TOKEN=TOKEN,
            )
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            try:
                with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
                    deadline = time.monotonic() + 120
                    while True:
                        try:
                            if client.get("/api/health").status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"api did not start: {api.output()}")
                        time.sleep(0.5)
                    job = lambda: f"{(g := rng.randint(1, args.jobs))}_{g % 97}"  # noqa: E731
                    rows = []
                    n = args.requests
                    timed(client, [f"/api/job-status/{job()}" for _ in range(20)])  # warm up
                    for name, paths in (
                        (
                            "GET /api/job-status/{id}",
                            [f"/api/job-status/{job()}" for _ in range(n)],
                        ),
                        (
                            "GET /api/jobs?limit=100",
                            [f"/api/jobs?limit=100&after={job()}" for _ in range(n)],
                        ),
                        (
                            "GET /api/jobs?operation=coating&status=completed&limit=100",
                            [
                                f"/api/jobs?operation=coating&status=completed&limit=100&after={job()}"
                                for _ in range(n)
                            ],
                        ),
                        (
                            "GET /api/jobs?status=partial&limit=100",
                            [f"/api/jobs?status=partial&limit=100&after={job()}" for _ in range(n)],
                        ),
                        (
                            "GET /api/status-updates?limit=1000",
                            [
                                f"/api/status-updates?limit=1000&after={rng.randint(0, args.audit_rows)}"
                                for _ in range(n // 3)
                            ],
                        ),
                    ):
                        p50, p99 = percentiles(timed(client, paths))
                        rows.append((name, len(paths), f"{p50:.1f}", f"{p99:.1f}"))
                    print_table(
                        f"Read latency over HTTP, {args.audit_rows:,} audit rows, {args.jobs:,} jobs",
                        ("request", "n", "p50 ms", "p99 ms"),
                        rows,
                    )
                    rss_idle = psutil.Process(api.pid).memory_info().rss
                    with PeakRss(api.pid) as peak:
                        started = time.perf_counter()
                        lines = 0
                        with client.stream(
                            "GET", "/api/status-updates", headers={"Accept": "text/csv"}
                        ) as answer:
                            for _line in answer.iter_lines():
                                lines += 1
                        seconds = time.perf_counter() - started
                    print_table(
                        "Full CSV export of the feed",
                        ("rows", "seconds", "rows/s", "server RSS idle MiB", "peak MiB"),
                        [
                            (
                                lines - 1,
                                f"{seconds:.1f}",
                                f"{(lines - 1) / seconds:,.0f}",
                                f"{rss_idle / 2**20:.0f}",
                                f"{peak.peak / 2**20:.0f}",
                            )
                        ],
                    )
            finally:
                api.kill()
            sink_port = free_port()
            sink = ThreadingHTTPServer(("127.0.0.1", sink_port), Sink)
            threading.Thread(target=sink.serve_forever, daemon=True).start()
            with jm.begin() as conn:
                conn.execute(
                    sa.text("INSERT INTO webhook_subscriptions (url, secret) VALUES (:u, 's')"),
                    {"u": f"http://127.0.0.1:{sink_port}/hook"},
                )
                conn.execute(
                    sa.text(
                        "INSERT INTO job_status_changes (change_id, job_id, version_tag,"
                        " operation, event, status, source_type, source_id)"
                        " SELECT :first + n, (n % 1000) || '_x', '1', 'coating', 'status',"
                        " 'completed', 'scanner', 10000000 + n FROM generate_series(1, :n) n"
                    ),
                    {"n": args.deliveries, "first": args.audit_rows},
                )
            started = time.perf_counter()
            report = deliver_due(jm, WebhookDelivery(run_seconds=3600, allow_private=True))
            seconds = time.perf_counter() - started
            sink.shutdown()
            print_table(
                "Webhook delivery to a receiver on 127.0.0.1 (one deliverer, sequential POSTs)",
                ("deliveries", "seconds", "per second", "received"),
                [
                    (
                        report.delivered,
                        f"{seconds:.1f}",
                        f"{report.delivered / seconds:,.0f}",
                        Sink.count,
                    )
                ],
            )
    print(f"machine: {machine_line()}")


if __name__ == "__main__":
    main()
