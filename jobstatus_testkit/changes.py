"""Changes put straight into the change stream (R25), numbered as the writer numbers them: under
the writers' lock, one more than the last. For tests of what reads and delivers the stream."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from jobstatus_dagster.io.outbox import enqueue_changes
from jobstatus_dagster.io.writer import WRITER_LOCK

_INSERT = sa.text("""
    INSERT INTO job_status_changes (change_id, job_id, version_tag, operation, event, status,
        event_time, source_type, source_id, previous_change_id)
    SELECT COALESCE((SELECT max(change_id) FROM job_status_changes), 0) + 1, :job_id,
           :version_tag, :operation, :event, :status, :event_time, :source_type, :source_id,
           (SELECT max(change_id) FROM job_status_changes WHERE job_id = :job_id
              AND version_tag = :version_tag AND operation = :operation)
    RETURNING change_id
""")


def add_change(
    conn: sa.Connection,
    job_id: str,
    operation: str = "coating",
    status: str | None = "completed",
    *,
    version_tag: str = "1",
    source_id: int | None = None,
    event_time: datetime | None = None,
) -> int:
    """One change of (job_id, version_tag, operation): a status, or a withdrawal when
    ``status`` is None. Returns its id."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITER_LOCK})
    withdrawn = status is None
    return conn.execute(
        _INSERT,
        {
            "job_id": job_id,
            "version_tag": version_tag,
            "operation": operation,
            "event": "withdrawn" if withdrawn else "status",
            "status": status,
            "event_time": event_time,
            "source_type": None if withdrawn else "scanner",
            "source_id": None if withdrawn else source_id,
        },
    ).scalar_one()


# ----- what a reader of the stream holds (R25) ----------------------------------------------
STATE_FIELDS = (
    "status",
    "printed_count",
    "aborted_count",
    "total_count",
    "notes",
    "source_type",
    "source_id",
)


def fold(changes: list[dict]) -> dict[tuple, dict]:
    """What a reader keeping the last change per (job, version, operation) holds: keys whose
    last change is a withdrawal hold nothing. Each change's own fields, in the reader's order."""
    held: dict[tuple, dict] = {}
    for change in changes:
        held[(change["job_id"], change["version_tag"], change["operation"])] = change
    return {
        key: {f: change[f] for f in STATE_FIELDS}
        for key, change in held.items()
        if change["event"] == "status"
    }


def feed_changes(jobmanager: sa.Engine, page: int = 500) -> list[dict]:
    """The whole feed as a client pages it (io/feed.read_feed, the API's own read)."""
    from jobstatus_dagster.io.feed import read_feed

    changes: list[dict] = []
    after = 0
    while True:
        with jobmanager.connect() as conn:
            rows = read_feed(conn, after, page)
        if not rows:
            return changes
        changes += rows
        after = rows[-1]["update_id"]


def delivered_changes(jobmanager: sa.Engine, subscription_id: int) -> list[dict]:
    """One subscription's deliveries in the order its receiver gets them (per job, outbox order:
    the head of each job's queue goes first, io/outbox.py), once the deliverer has queued the
    changes committed so far, as every delivery run first does."""
    with jobmanager.begin() as conn:
        enqueue_changes(conn)
    with jobmanager.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                sa.text(
                    "SELECT jobstatus_delivery_body(o) FROM webhook_outbox o"
                    " WHERE subscription_id = :s ORDER BY job_id, outbox_id"
                ),
                {"s": subscription_id},
            )
        ]


def held_state(jobmanager: sa.Engine) -> dict[tuple, dict]:
    """job_version_state: the state the stream's last changes must give."""
    with jobmanager.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM job_version_state")).mappings().all()
    return {
        (r["job_id"], r["version_tag"], r["operation"]): {f: r[f] for f in STATE_FIELDS}
        for r in rows
    }


# The state per (job, operation) the writer keeps beside the stream (R15: jobs.operations is
# its projection), naming the version it is of: what a reader of the stream must hold for that
# key, from a table the stream does not fill. Not `not_printed`: the job's own note that its
# highest version has no print status yet (R11), which no version's state says.
_OPERATION_STATE_SQL = sa.text(
    "SELECT job_id, version_tag, operation, status"
    " FROM job_operation_state WHERE status IS NOT NULL AND status <> 'not_printed'"
)


def operation_state_problems(
    jobmanager: sa.Engine, held: dict[tuple, dict], what: str, label: str
) -> list[str]:
    """R25 against ``job_operation_state``: the folded state of each (job, version, operation)
    it holds has its status, and no folded key is of a (job, operation) it holds nothing for.
    (Which row it cites may differ: a version printed by two events cites the deciding one in
    the stream and the latest in the job's state.)"""
    problems = []
    with jobmanager.connect() as conn:
        rows = conn.execute(_OPERATION_STATE_SQL).mappings().all()
        with_state = set(conn.execute(sa.text("SELECT job_id, operation FROM job_operation_state")))
    # the other way: a folded key of a (job, operation) that holds no state at all is stale
    for key, got in held.items():
        if (key[0], key[2]) not in with_state:
            problems.append(
                f"{label}: folding {what} (R25): {key!r} holds {got['status']!r}, but"
                " job_operation_state holds nothing for that job and operation"
            )
    for row in rows:
        key = (row["job_id"], row["version_tag"], row["operation"])
        got = held.get(key)
        seen = None if got is None else got["status"]
        expected = row["status"]
        if seen != expected:
            problems.append(
                f"{label}: folding {what} (R25): {key!r} is {seen!r},"
                f" job_operation_state says {expected!r}"[:800]
            )
    return problems[:4]


def fold_problems(jobmanager: sa.Engine, subscription_id: int | None, label: str) -> list[str]:
    """R25: folding the feed, and separately one subscription's deliveries, gives the state:
    ``job_version_state``, and, outside the stream's own tables, each operation's state
    (``job_operation_state``) and PrintOS's print state."""
    state = held_state(jobmanager)
    problems = []
    folds = {"the feed": fold(feed_changes(jobmanager))}
    if subscription_id is not None:
        folds["the deliveries"] = fold(delivered_changes(jobmanager, subscription_id))
    for what, held in folds.items():
        problems += operation_state_problems(jobmanager, held, what, label)
    # an oracle outside the stream's own tables: PrintOS's print state of each version (R11)
    # is what the folded print change of that version says, where PrintOS decided it (R15)
    with jobmanager.connect() as conn:
        prints = conn.execute(
            sa.text(
                "SELECT job_id, version_tag, status, printed_count, aborted_count, total_count"
                " FROM job_print_state WHERE status IS NOT NULL"
            )
        ).all()
    for what, held in folds.items():
        for job_id, version, *counts in prints:
            got = held.get((job_id, version, "print"))
            seen = None if got is None else [got[f] for f in STATE_FIELDS[:4]]
            if got is None or got["source_type"] != "print_os" or seen != counts:
                problems.append(
                    f"{label}: folding {what} (R25): print of {(job_id, version)} is {seen!r},"
                    f" job_print_state says {counts!r}"[:800]
                )
    for what, held in folds.items():
        if held != state:
            wrong = sorted(
                (k, held.get(k), state.get(k))
                for k in held.keys() | state.keys()
                if held.get(k) != state.get(k)
            )
            problems.append(f"{label}: folding {what} (R25) differs: {wrong[:4]!r}"[:800])
    return problems
