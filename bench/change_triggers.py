"""What webhook subscriptions cost the writes (issue 19): a 200,000-row insert into the audit and
into the change stream with 0, 1 and 10 subscriptions, and what queuing those changes for the
subscribers then costs the deliverer.

    .venv/bin/python -m bench.change_triggers --rows 200000

Since R25 the webhooks deliver the change stream, no longer the audit; since 0020 the outbox is
filled by the deliverer (``io/outbox.enqueue_changes``: one outbox row per change and
subscription, in batches), no longer by a trigger inside every write. Each figure is the median
of ``--repeat`` runs into emptied tables, in one transaction each, on fresh databases; ratios
to the same insert with no subscription, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy as sa

from bench.common import log, machine_line, print_table
from jobstatus_dagster.io.outbox import enqueue_changes
from jobstatus_testkit.databases import embedded_server, engines

AUDIT = sa.text("""
    INSERT INTO job_status_updates (source_type, source_id, job_id, version_tag, operation,
        status, printed_count, aborted_count, total_count, applied, notes, event_time, marker)
    SELECT 'print_os', n, (n % 50000) || '_1', '1', 'print', 'completed', 1, 0, 3, true,
           '1 of 3 files printed', timestamp '2026-11-01' + n * interval '10 ms', n
    FROM generate_series(1, :rows) n
""")
CHANGES = sa.text("""
    INSERT INTO job_status_changes (change_id, job_id, version_tag, operation, event, status,
        printed_count, aborted_count, total_count, notes, event_time, source_type, source_id,
        source_marker)
    SELECT n, (n % 50000) || '_1', '1', 'print', 'status', 'completed', 1, 0, 3,
           '1 of 3 files printed', timestamp '2026-11-01' + n * interval '10 ms', 'print_os', n,
           n
    FROM generate_series(1, :rows) n
""")
EMPTY = sa.text("TRUNCATE job_status_updates, job_status_changes, webhook_attempts, webhook_outbox")
REWIND = sa.text("UPDATE webhook_subscriptions SET enqueued_up_to = 0")


def timed(jm: sa.Engine, statement: sa.TextClause, rows: int) -> float:
    with jm.begin() as conn:
        conn.execute(EMPTY)
        conn.execute(REWIND)
    started = time.perf_counter()
    with jm.begin() as conn:
        conn.execute(statement, {"rows": rows})
    return time.perf_counter() - started


def timed_enqueue(jm: sa.Engine, rows: int) -> float:
    """The deliverer queuing ``rows`` new changes for every subscription."""
    timed(jm, CHANGES, rows)
    started = time.perf_counter()
    with jm.begin() as conn:
        enqueue_changes(conn)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[tuple[str, int], float] = {}
    with embedded_server() as server, engines(server.migrated("triggers")) as (jm, _):
        for subscriptions in (0, 1, 10):
            with jm.begin() as conn:
                conn.execute(sa.text("DELETE FROM webhook_outbox"))
                conn.execute(sa.text("DELETE FROM webhook_subscriptions"))
                for i in range(subscriptions):
                    conn.execute(
                        sa.text("INSERT INTO webhook_subscriptions (url, secret) VALUES (:u, 's')"),
                        {"u": f"http://127.0.0.1:9/{i}"},
                    )
            for name, statement in (("audit", AUDIT), ("changes", CHANGES)):
                seconds = statistics.median(
                    timed(jm, statement, args.rows) for _ in range(args.repeat)
                )
                results[(name, subscriptions)] = seconds
                log(f"{name}, {subscriptions} subscriptions: {seconds:.2f} s")
            if subscriptions:
                queuing = statistics.median(
                    timed_enqueue(jm, args.rows) for _ in range(args.repeat)
                )
                results[("queue", subscriptions)] = queuing
                log(f"deliverer queuing, {subscriptions} subscriptions: {queuing:.2f} s")
    print_table(
        f"A {args.rows:,}-row insert, median of {args.repeat} (ratio to no subscription)",
        ("insert into", "0 subscriptions", "1 subscription", "10 subscriptions"),
        [
            (
                name,
                *(
                    f"{results[(name, n)]:.2f} s ({results[(name, n)] / results[(name, 0)]:.1f}×)"
                    for n in (0, 1, 10)
                ),
            )
            for name in ("audit", "changes")
        ],
    )
    print_table(
        "The deliverer queuing those changes for its subscribers (ratio to the bare change insert)",
        ("", "1 subscription", "10 subscriptions"),
        [
            (
                "enqueue_changes",
                *(
                    f"{results[('queue', n)]:.2f} s"
                    f" ({results[('queue', n)] / results[('changes', 0)]:.1f}×)"
                    for n in (1, 10)
                ),
            )
        ],
    )
    print(f"machine: {machine_line()}")


if __name__ == "__main__":
    main()
