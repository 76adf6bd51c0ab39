"""Memory bound (issue 6, item 2): peak RSS of processing backlogs of different sizes.

    .venv/bin/python -m bench.memory --events 100000 1000000

For each size: fresh databases, a synthetic shop with that many print events (bench/synth.py),
then ``jobstatus process --source print_os`` as a subprocess (default chunk size), its wall time
and its own peak RSS. The chunk, not the backlog, should set memory: the last column is each
size's peak over the first (smallest) size's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import synth
from bench.common import log, machine_line, print_table
from jobstatus_testkit.cli import measure_cli
from jobstatus_testkit.databases import embedded_server, engines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chunk-size", type=int, default=None, help="JOBSTATUS_CHUNK_SIZE")
    parser.add_argument("--keep", action="store_true", help="keep the temp Postgres folder")
    args = parser.parse_args(argv)
    env = {"JOBSTATUS_CHUNK_SIZE": str(args.chunk_size)} if args.chunk_size else {}

    rows = []
    with embedded_server(keep=args.keep) as server:
        for events in sorted(args.events):
            urls = server.migrated("mem")
            with engines(urls) as (jm, lg):
                segment = synth.append_segment(jm, lg, events)
            log(f"{segment.events} events generated; processing")
            home = Path(tempfile.mkdtemp(prefix="home-", dir=server.folder))
            run = measure_cli(urls, home, "process", "--source", "print_os", **env)
            log(run.stdout.strip())
            rows.append(
                [segment.events, run.seconds, segment.events / run.seconds, run.peak_rss_mib]
            )
    base = rows[0][3]
    for row in rows:
        row.append(row[3] / base)
    print(f"machine: {machine_line()}")
    print(
        f"chunk size {args.chunk_size or 'default (5000)'}; synthetic shop, 4 events per imposition"
    )
    print_table(
        "memory bound",
        ["print events", "wall s", "events/s", "peak RSS MiB", "RSS / smallest"],
        rows,
    )


if __name__ == "__main__":
    main()
