"""History independence (issue 6, item 3): the cost of new events on top of small and big
already-processed histories.

    .venv/bin/python -m bench.history --history 100000 2000000 --new 10000

For each history size: fresh databases, a synthetic history segment (bench/synth.py) processed
by the product in this process (``process_source``, a Postgres-backed instance, chunk ``--history-chunk`` to get there faster; the state
does not depend on the chunking), ANALYZE (autovacuum's job), then a segment of ``--new`` events
on new jobs, processed with the default chunk and timed. A run that finds nothing is timed too,
so the table shows the work beyond start-up. ``--explain`` prints the plans of the hot
statements against the biggest history.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from bench import synth
from bench.common import log, machine_line, print_table
from jobstatus_testkit.cli import measure_cli
from jobstatus_testkit.databases import embedded_server, engines


def explain_hot_statements(jm: sa.Engine, lg: sa.Engine, segment: synth.Segment) -> None:
    """EXPLAIN ANALYZE of the per-window statements, for one window of the new segment."""
    from jobstatus_dagster.core.identifiers import FILE_JOB_SQL
    from jobstatus_dagster.io.sources import window_query

    lo, hi = segment.first_marker - 1, min(segment.last_marker, segment.first_marker + 4999)
    imps = [
        f"H-IMP-{i:08d}" for i in range(segment.first_imposition, segment.first_imposition + 1250)
    ]
    first_job = 2 * segment.first_imposition
    jobs = [
        f"{10000000 + j}_{1000 + j % 9000}" for j in range(first_job, first_job + 2 * len(imps))
    ]
    statements = [
        (
            jm,
            "window load",
            window_query("print_os"),
            {
                "source_type": "print_os",
                "from_marker": lo,
                "to_marker": hi,
                "lookback": 10000,
                "late_limit": 5000,
                "retry_limit": 5,
                "retry_batch": 500,
                "retry_interval": 300,
            },
        ),
        (
            lg,
            "files of jobs",
            "SELECT DISTINCT imposition_id, file_id FROM imposition_file_mapping"
            f" WHERE {FILE_JOB_SQL.replace(':', chr(92) + ':')} = ANY(:ids)",
            {"ids": jobs},
        ),
        (
            jm,
            "print history",
            'SELECT id, name, status, marker FROM "print OS" WHERE name = ANY(:ids) AND marker <= :h',
            {"ids": imps, "h": hi},
        ),
    ]
    for engine, title, statement, params in statements:
        with engine.connect() as conn:
            plan = conn.execute(sa.text("EXPLAIN (ANALYZE, BUFFERS) " + statement), params)
            print(f"\n-- {title}")
            # Parameters are inlined in the plan: cut the long id arrays.
            print("\n".join(row[0] if len(row[0]) < 160 else row[0][:157] + "..." for row in plan))


def build_history(urls, home: Path, chunk: int) -> float:
    """Process the history in this process (same product path, a Postgres-backed instance,
    bigger windows to get there sooner); returns seconds."""
    import dagster as dg

    from jobstatus_dagster.definitions import build_definitions
    from jobstatus_dagster.pipeline.resources import ProcessingSettings
    from jobstatus_dagster.pipeline.runner import instance_overrides, process_source

    settings = ProcessingSettings(chunk_size=chunk, partition_width=max(10_000, chunk))
    defs = build_definitions(urls.jobmanager, urls.logs, processing=settings)
    (home / "history").mkdir(parents=True)
    started = time.perf_counter()
    with dg.instance_for_test(
        temp_dir=str(home / "history"), overrides=instance_overrides(urls.dagster)
    ) as instance:
        outcome = process_source(defs, instance, "print_os", trigger="backfill")
    log(outcome.line())
    if not outcome.success:
        raise RuntimeError(outcome.line())
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, nargs="+", default=[100_000, 2_000_000])
    parser.add_argument("--new", type=int, default=10_000, help="new events timed")
    parser.add_argument("--history-chunk", type=int, default=20_000)
    parser.add_argument("--explain", action="store_true", help="plans of the hot statements")
    parser.add_argument("--keep", action="store_true", help="keep the temp Postgres folder")
    args = parser.parse_args(argv)

    rows = []
    with embedded_server(keep=args.keep) as server:
        for size in sorted(args.history):
            urls = server.migrated("hist")
            home = Path(tempfile.mkdtemp(prefix="home-", dir=server.folder))
            with engines(urls) as (jm, lg):
                history = synth.append_segment(jm, lg, size)
                log(f"history of {history.events} events: processing")
                built_s = build_history(urls, home, args.history_chunk)
                synth.analyze(jm, lg)
                new = synth.append_segment(jm, lg, args.new, after=history)
                log(f"{new.events} new events: processing")
                run = measure_cli(urls, home, "process", "--source", "print_os")
                log(run.stdout.strip())
                idle = measure_cli(urls, home, "process", "--source", "print_os")
                if args.explain and size == max(args.history):
                    explain_hot_statements(jm, lg, new)
            rows.append(
                [
                    history.events,
                    built_s,
                    new.events,
                    run.seconds,
                    idle.seconds,
                    run.seconds - idle.seconds,
                    run.peak_rss_mib,
                ]
            )
    base_total, base_net = rows[0][3], rows[0][5]
    for row in rows:
        row += [row[3] / base_total, row[5] / base_net]
    print(f"machine: {machine_line()}")
    print(
        "synthetic shop (bench/synth.py); history processed with chunk"
        f" {args.history_chunk}, new events with the default chunk"
    )
    print_table(
        "history independence",
        [
            "history events",
            "history s",
            "new events",
            "new s",
            "idle run s",
            "new - idle s",
            "peak RSS MiB",
            "new s / smallest",
            "(new - idle) / smallest",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
