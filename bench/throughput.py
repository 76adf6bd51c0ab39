"""Backlog throughput (issue 6, item 1): the product vs a row-at-a-time reference and the write
limit, on the same demo shop.

    .venv/bin/python -m bench.throughput --scale 250      # 50k jobs, ~200k events, 100k scans

1. A fresh embedded Postgres; the demo shop at ``--scale``; two copies of it (TEMPLATE).
2. Product: ``jobstatus process --source print_os`` then ``--source scanner`` as subprocesses
   (Dagster runs on Postgres storage), wall time and the process's peak RSS.
3. Write limit: the final row changes the product made (per source), applied to copy 1 with one
   COPY + one UPDATE/INSERT … FROM per target table.
4. Reference: the first ``--reference-events`` rows of each source, row at a time on copy 2,
   extrapolated to the whole backlog.

``--db-time`` also logs every statement's server time (product and limit) and prints where the
product's own SQL alone would put the ratios if its Python and Dagster cost nothing: the
ceiling of what any speed-up outside the database can reach. Its throughput table then includes
the logging's cost; take throughput figures from a run without it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import baselines
from bench.common import StatementTime, log, machine_line, print_table, scalar
from jobstatus_testkit.cli import measure_cli
from jobstatus_testkit.databases import database_name, embedded_server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=250, help="demo scale (1 ≈ 800 events)")
    parser.add_argument("--reference-events", type=int, default=2000, help="rows per source")
    parser.add_argument("--chunk-size", type=int, default=None, help="JOBSTATUS_CHUNK_SIZE")
    parser.add_argument(
        "--partition-width", type=int, default=None, help="JOBSTATUS_PARTITION_WIDTH (markers)"
    )
    parser.add_argument(
        "--sources", nargs="+", default=["print_os", "scanner"], choices=["print_os", "scanner"]
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp Postgres folder")
    parser.add_argument(
        "--db-time", action="store_true", help="also sum every statement's server time"
    )
    args = parser.parse_args(argv)
    env = {"JOBSTATUS_CHUNK_SIZE": str(args.chunk_size)} if args.chunk_size else {}
    if args.partition_width:
        env["JOBSTATUS_PARTITION_WIDTH"] = str(args.partition_width)

    with embedded_server(keep=args.keep) as server:
        log(f"demo shop at scale {args.scale}")
        urls, generated = server.demo_shop(args.scale)
        limit_urls = server.clone(urls, "lim")
        reference_urls = server.clone(urls, "ref")
        sizes = {
            "print_os": scalar(urls.jobmanager, 'SELECT count(*) FROM "print OS"'),
            "scanner": scalar(urls.jobmanager, "SELECT count(*) FROM scanned_codes"),
        }
        jobs = scalar(urls.jobmanager, "SELECT count(*) FROM jobs")
        mappings = scalar(urls.logs, "SELECT count(*) FROM imposition_file_mapping")
        log(f"{jobs} jobs, {mappings} mappings, {sizes} rows; generated in {generated:.1f} s")

        rows, db_rows = [], []
        statements = StatementTime(server, enabled=args.db_time)
        before = baselines.snapshot(limit_urls.jobmanager, limit_urls.logs)
        home = Path(tempfile.mkdtemp(prefix="home-", dir=server.folder))
        for source, label in (("print_os", "print events"), ("scanner", "scans")):
            if source not in args.sources:
                continue
            log(f"product: jobstatus process --source {source}")
            with statements.measure() as product_sql:
                run = measure_cli(urls, home, "process", "--source", source, **env)
            log(run.stdout.strip())
            after = baselines.snapshot(urls.jobmanager, urls.logs)
            delta = baselines.changes(before, after)
            before = after
            changed_rows = sum(blob.count(b"\n") for blob in delta.values())

            log(f"write limit: {changed_rows} row changes")
            with statements.measure() as limit_sql:
                limit_s, _ = baselines.apply_changes(limit_urls.jobmanager, limit_urls.logs, delta)

            log(f"reference: first {args.reference_events} {label}, row at a time")
            reference = (
                baselines.reference_print if source == "print_os" else baselines.reference_scans
            )
            with statements.paused():
                done, reference_s = reference(
                    reference_urls.jobmanager, reference_urls.logs, args.reference_events
                )
            n = sizes[source]
            if args.db_time:
                own = sum(
                    product_sql.get(database_name(u), 0.0) for u in (urls.jobmanager, urls.logs)
                )
                floor = sum(
                    limit_sql.get(database_name(u), 0.0)
                    for u in (limit_urls.jobmanager, limit_urls.logs)
                )
                reference_total = n * reference_s / done
                db_rows.append(
                    (
                        label,
                        run.seconds,
                        own,
                        product_sql.get(database_name(urls.dagster), 0.0),
                        limit_s,
                        floor,
                        reference_total,
                        limit_s / own,
                        reference_total / own,
                    )
                )
            product_rate = n / run.seconds
            limit_rate = n / limit_s
            reference_rate = done / reference_s
            rows.append(
                (
                    label,
                    n,
                    changed_rows,
                    run.seconds,
                    product_rate,
                    run.peak_rss_mib,
                    limit_rate,
                    reference_rate,
                    n / reference_rate,
                    product_rate / limit_rate,
                    product_rate / reference_rate,
                )
            )

    print(f"machine: {machine_line()}")
    print(
        f"shop: scale {args.scale}, {jobs:,} jobs, {mappings:,} file mappings;"
        f" chunk size {args.chunk_size or 'default'}, partition width"
        f" {args.partition_width or 'default'}; reference on the first"
        f" {args.reference_events:,} rows, extrapolated"
    )
    print_table(
        "backlog throughput",
        [
            "source",
            "rows",
            "row changes",
            "product s",
            "product rows/s",
            "peak RSS MiB",
            "limit rows/s",
            "reference rows/s",
            "reference s (extrap.)",
            "product/limit",
            "product/reference",
        ],
        rows,
    )

    if db_rows:
        print_table(
            "database time",
            [
                "source",
                "product s (logged)",
                "product SQL s",
                "Dagster storage SQL s",
                "limit s",
                "limit SQL s",
                "reference s (extrap.)",
                "product/limit at most",
                "product/reference at most",
            ],
            db_rows,
        )
        print(
            "product SQL: server time of the product's statements on its own databases (reads,"
            " temp tables, writes, commits); 'at most': the ratio if the product's Python and"
            " Dagster took no time at all"
        )


if __name__ == "__main__":
    main()
