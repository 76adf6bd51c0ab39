"""Per-run overhead (issue 6, item 5): a run that finds nothing, and a run of one event.

    .venv/bin/python -m bench.overhead --repeat 5

On a small demo shop whose backlog is already processed, measures (median of ``--repeat``):
- ``jobstatus process --source print_os`` as a subprocess: everything a cron-style caller pays,
  interpreter and imports included;
- ``process_source`` inside one warm process with a Postgres-backed DagsterInstance: what
  Dagster and the run itself cost beyond start-up (the daemon's case).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from bench.common import log, machine_line, print_table
from jobstatus_testkit.cli import measure_cli
from jobstatus_testkit.databases import embedded_server, engines

_ONE_EVENT = sa.text(
    """INSERT INTO "print OS" (name, status, marker, job_complete_time)
       SELECT name, 'PRINTED', (SELECT max(marker) + 1 FROM "print OS"), now()
       FROM "print OS" WHERE name IS NOT NULL AND upper(status) = 'PRINTED'
       ORDER BY id LIMIT 1"""
)


def add_one_event(jobmanager: sa.Engine) -> None:
    with jobmanager.begin() as conn:
        conn.execute(_ONE_EVENT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=5, help="demo scale of the shop")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per case")
    parser.add_argument("--keep", action="store_true", help="keep the temp Postgres folder")
    args = parser.parse_args(argv)

    import dagster as dg

    from jobstatus_dagster.definitions import build_definitions
    from jobstatus_dagster.pipeline.runner import instance_overrides, process_source

    results: dict[str, list[float]] = {}
    rss: dict[str, float] = {}
    with embedded_server(keep=args.keep) as server:
        urls, _ = server.demo_shop(args.scale)
        home = Path(tempfile.mkdtemp(prefix="home-", dir=server.folder))
        defs = build_definitions(urls.jobmanager, urls.logs)
        (home / "inproc").mkdir(parents=True)
        with (
            engines(urls) as (jm, _lg),
            dg.instance_for_test(
                temp_dir=str(home / "inproc"), overrides=instance_overrides(urls.dagster)
            ) as instance,
        ):
            log("processing the backlog once (in process)")
            for source in ("print_os", "scanner"):
                process_source(defs, instance, source)
            for case in ("nothing new", "one event"):
                key = f"CLI subprocess, {case}"
                for _ in range(args.repeat):
                    if case == "one event":
                        add_one_event(jm)
                    run = measure_cli(urls, home, "process", "--source", "print_os")
                    expected = "nothing new" if case == "nothing new" else "1 run(s), 1 rows read"
                    assert expected in run.stdout, run.stdout
                    results.setdefault(key, []).append(run.seconds)
                    rss[key] = max(rss.get(key, 0.0), run.peak_rss_mib)

            for case in ("nothing new", "one event"):
                key = f"in-process process_source, {case}"
                for _ in range(args.repeat):
                    if case == "one event":
                        add_one_event(jm)
                    started = time.perf_counter()
                    outcome = process_source(defs, instance, "print_os")
                    results.setdefault(key, []).append(time.perf_counter() - started)
                    assert len(outcome.runs) == (case == "one event"), outcome.line()

    print(f"machine: {machine_line()}")
    print(f"shop: demo scale {args.scale}, backlog processed; {args.repeat} measurements per case")
    print_table(
        "per-run overhead",
        ["case", "median s", "min s", "max s", "peak RSS MiB"],
        [
            (key, statistics.median(v), min(v), max(v), rss.get(key, "-"))
            for key, v in results.items()
        ],
    )


if __name__ == "__main__":
    main()
