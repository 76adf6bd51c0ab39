"""Webhook subscriptions and their outbox: what is owed to whom, and what happened to it.

What is owed is the change stream (R25, ``job_status_changes``): a change is owed to a receiver
exactly when it committed. The deliverer copies the changes past each subscription's position
into the outbox (``enqueue_changes``; before 0020 a trigger did it inside every write, at a cost
per subscription), reads what is due, one subscription at a time, and records each attempt as
it happens (one statement by primary key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class Due:
    """One delivery to attempt now: the head of its (subscription, job) queue."""

    outbox_id: int
    delivery_id: str
    update_id: int
    subscription_id: int
    url: str
    # The secrets that sign it, the newest first: two during a rotation's overlap.
    secrets: tuple[str, ...]
    body: bytes
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """One attempt's result; ``status_code`` None when no answer came (refused, timed out).
    ``retry_in``: seconds until the next attempt when this one failed."""

    outbox_id: int
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int
    retry_in: float = 0.0


def create_subscription(
    conn: sa.Connection, url: str, secret: str, operations: list[str] | None
) -> dict[str, Any]:
    return dict(
        conn.execute(
            sa.text(
                "INSERT INTO webhook_subscriptions (url, secret, operations)"
                " VALUES (:url, :secret, :operations)"
                " RETURNING subscription_id AS id, url, operations, created_at"
            ),
            {"url": url, "secret": secret, "operations": operations},
        )
        .mappings()
        .one()
    )


# What the API shows of a subscription: never its secrets (nor, once the API redacts it, the
# URL's credentials).
_SUBSCRIPTION_VIEW = (
    "SELECT s.subscription_id AS id, s.url, s.operations, s.created_at,"
    " s.disabled_at, s.disabled_reason, s.secret_rotated_at,"
    " s.last_attempt_at, s.last_attempt_status, s.last_attempt_error,"
    " CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret_expires_at END"
    "   AS previous_secret_expires_at,"
    " count(*) FILTER (WHERE o.state = 'pending')"
    # What the stream owes it and the deliverer has not queued yet is pending too (0020): for
    # a subscription to every operation, the distance to the stream's end (change ids are
    # gap-free, 0016), so a long backlog costs nothing to count; a filtered one counts.
    " + CASE WHEN s.disabled_at IS NOT NULL THEN 0"
    "   WHEN s.operations IS NULL THEN GREATEST(COALESCE("
    "     (SELECT max(change_id) FROM job_status_changes), 0) - s.enqueued_up_to, 0)"
    "   ELSE (SELECT count(*) FROM job_status_changes c WHERE c.change_id > s.enqueued_up_to"
    "     AND c.operation = ANY (s.operations)) END AS pending,"
    " count(*) FILTER (WHERE o.state = 'delivered') AS delivered,"
    " count(*) FILTER (WHERE o.state = 'failed') AS failed,"
    " (array_agg(o.last_error ORDER BY o.outbox_id DESC)"
    "   FILTER (WHERE o.state = 'failed'))[1] AS last_failure"
    " FROM webhook_subscriptions s LEFT JOIN webhook_outbox o USING (subscription_id)"
    " WHERE s.deleted_at IS NULL"
)


def list_subscriptions(conn: sa.Connection) -> list[dict[str, Any]]:
    sql = sa.text(_SUBSCRIPTION_VIEW + " GROUP BY s.subscription_id ORDER BY s.subscription_id")
    return [dict(row) for row in conn.execute(sql).mappings()]


def delete_subscription(conn: sa.Connection, subscription_id: int) -> bool:
    """Stops deliveries to it (pending ones are given up); its history stays."""
    deleted = conn.execute(
        sa.text(
            "UPDATE webhook_subscriptions SET deleted_at = now()"
            " WHERE subscription_id = :id AND deleted_at IS NULL"
        ),
        {"id": subscription_id},
    ).rowcount
    conn.execute(
        sa.text(
            "UPDATE webhook_outbox SET state = 'failed', finished_at = now(),"
            " last_error = 'subscription deleted'"
            " WHERE subscription_id = :id AND state = 'pending'"
        ),
        {"id": subscription_id},
    )
    return deleted > 0


def rotate_secret(
    conn: sa.Connection, subscription_id: int, new_secret: str, overlap_seconds: float
) -> dict[str, Any] | None:
    """The new secret signs from now on; the replaced one signs beside it for
    ``overlap_seconds``. A secret replaced before (a second rotation within the overlap) stops
    at once: at most two secrets sign. None for an unknown or deleted subscription."""
    row = (
        conn.execute(
            sa.text(
                "UPDATE webhook_subscriptions SET previous_secret = secret, secret = :secret,"
                " secret_rotated_at = now(),"
                " previous_secret_expires_at = now() + make_interval(secs => :overlap)"
                " WHERE subscription_id = :id AND deleted_at IS NULL"
                " RETURNING subscription_id AS id, secret_rotated_at,"
                " previous_secret_expires_at"
            ),
            {"id": subscription_id, "secret": new_secret, "overlap": overlap_seconds},
        )
        .mappings()
        .one_or_none()
    )
    return None if row is None else dict(row)


def disable_subscription(conn: sa.Connection, subscription_id: int, reason: str) -> None:
    """The receiver ended it (410 Gone): no more attempts; its pending deliveries are given up
    with the reason. It stays listed, saying so."""
    conn.execute(
        sa.text(
            "UPDATE webhook_subscriptions SET disabled_at = now(), disabled_reason = :reason"
            " WHERE subscription_id = :id AND disabled_at IS NULL"
        ),
        {"id": subscription_id, "reason": reason},
    )
    give_up_disabled(conn, subscription_id)


def give_up_disabled(conn: sa.Connection, subscription_id: int | None = None) -> int:
    """Pending deliveries of disabled subscriptions (changes that landed after it was disabled
    too) are given up, naming why."""
    return conn.execute(
        sa.text(
            "UPDATE webhook_outbox o SET state = 'failed', finished_at = now(),"
            " last_error = 'subscription disabled: ' || s.disabled_reason"
            " FROM webhook_subscriptions s"
            " WHERE o.subscription_id = s.subscription_id AND o.state = 'pending'"
            " AND s.disabled_at IS NOT NULL"
            " AND (CAST(:id AS bigint) IS NULL OR s.subscription_id = :id)"
        ),
        {"id": subscription_id},
    ).rowcount


def postpone_subscription(conn: sa.Connection, subscription_id: int, seconds: float) -> None:
    """None of the subscription's pending deliveries is attempted in the next ``seconds`` (its
    receiver is unavailable, or asked for that long with Retry-After)."""
    conn.execute(
        sa.text(
            "UPDATE webhook_outbox SET next_attempt_at = greatest(next_attempt_at,"
            " now() + make_interval(secs => :seconds))"
            " WHERE subscription_id = :id AND state = 'pending'"
        ),
        {"id": subscription_id, "seconds": seconds},
    )


# The heads of the (subscription, job) queues: only the oldest pending delivery of a job may
# go, so a job's changes arrive in order; a head still waiting its backoff holds its job back.
# Disabled and deleted subscriptions are never called.
SUBSCRIPTIONS_DUE_SQL = sa.text("""
    SELECT DISTINCT h.subscription_id
    FROM (SELECT DISTINCT ON (subscription_id, job_id) subscription_id, next_attempt_at
          FROM webhook_outbox WHERE state = 'pending'
          ORDER BY subscription_id, job_id, outbox_id) h
    JOIN webhook_subscriptions s USING (subscription_id)
    WHERE h.next_attempt_at <= now() AND s.disabled_at IS NULL AND s.deleted_at IS NULL
    ORDER BY h.subscription_id
""")

DUE_SQL = sa.text("""
    SELECT h.outbox_id, h.delivery_id::text AS delivery_id, h.update_id, h.subscription_id,
           s.url, s.secret,
           CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
               AS previous_secret,
           jobstatus_delivery_body(h.o)::text AS body, h.attempts
    FROM (SELECT DISTINCT ON (job_id) outbox_id, delivery_id, subscription_id, update_id,
                 attempts, next_attempt_at, o
          FROM webhook_outbox o WHERE state = 'pending' AND subscription_id = :subscription_id
          ORDER BY job_id, outbox_id) h
    JOIN webhook_subscriptions s USING (subscription_id)
    WHERE h.next_attempt_at <= now() AND s.disabled_at IS NULL AND s.deleted_at IS NULL
    ORDER BY h.outbox_id
    LIMIT :limit
""")


# Each active subscription's changes past its position, up to ENQUEUE_BATCH of them, become
# outbox rows (in change order, so each job's queue is in change order) and the position moves
# on, in one statement; the subscription rows are locked, so two callers never queue a change
# twice. Every snapshot sees a gap-free prefix of the stream (ids are drawn under the writers'
# lock and committed in order): a change committed later is always past the position.
ENQUEUE_BATCH = 10_000
ENQUEUE_SQL = sa.text("""
    WITH stream AS (SELECT COALESCE(max(change_id), 0) AS last FROM job_status_changes),
    subs AS (
        SELECT s.subscription_id, s.operations, s.enqueued_up_to AS after,
               LEAST(stream.last, s.enqueued_up_to + :batch) AS up_to
        FROM webhook_subscriptions s CROSS JOIN stream
        WHERE s.deleted_at IS NULL AND s.disabled_at IS NULL AND s.enqueued_up_to < stream.last
        ORDER BY s.subscription_id
        FOR UPDATE OF s
    ), queued AS (
        INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, change_id, job_id,
                                    event, payload)
        SELECT gen_random_uuid(), s.subscription_id, c.change_id, c.change_id, c.job_id,
               c.event, 'null'::jsonb
        FROM subs s JOIN job_status_changes c
          ON c.change_id > s.after AND c.change_id <= s.up_to
         AND (s.operations IS NULL OR c.operation = ANY (s.operations))
        ORDER BY s.subscription_id, c.change_id
        RETURNING 1
    ), moved AS (
        UPDATE webhook_subscriptions w SET enqueued_up_to = s.up_to
        FROM subs s WHERE w.subscription_id = s.subscription_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM queued) AS queued, (SELECT count(*) FROM moved) AS moved
""")


def enqueue_batch(conn: sa.Connection, batch: int = ENQUEUE_BATCH) -> tuple[int, int]:
    """One batch: (outbox rows queued, subscriptions moved on); (0, 0) when none is behind."""
    row = conn.execute(ENQUEUE_SQL, {"batch": batch}).one()
    return row.queued, row.moved


def enqueue_changes(conn: sa.Connection, batch: int = ENQUEUE_BATCH) -> int:
    """Copy the changes owed to each subscription into the outbox until none is behind the
    stream's end, in the caller's transaction; returns how many outbox rows were queued."""
    total = 0
    while True:
        queued, moved = enqueue_batch(conn, batch)
        total += queued
        if not moved:
            return total


def enqueue_committing(engine: sa.Engine, batch: int = ENQUEUE_BATCH) -> int:
    """As ``enqueue_changes``, one transaction per batch: a long backlog (a backfill's) never
    holds the subscription rows, which every recorded attempt updates, for long."""
    total = 0
    while True:
        with engine.begin() as conn:
            queued, moved = enqueue_batch(conn, batch)
        total += queued
        if not moved:
            return total


# Whether the deliverer has work: a delivery that may go now (the head of its job's queue, its
# backoff over: a row queued behind a head that waits is not due), or a subscription behind
# the stream.
WORK_DUE_SQL = sa.text(
    "SELECT EXISTS (" + SUBSCRIPTIONS_DUE_SQL.text + ")"  # noqa: S608 - two constants
    """ OR EXISTS (SELECT 1 FROM webhook_subscriptions
                   WHERE deleted_at IS NULL AND disabled_at IS NULL
                   AND enqueued_up_to < (SELECT max(change_id) FROM job_status_changes))"""
)


def work_due(conn: sa.Connection) -> bool:
    return bool(conn.execute(WORK_DUE_SQL).scalar_one())


def subscriptions_due(conn: sa.Connection) -> list[int]:
    """The subscriptions with a delivery due now (disabled and deleted ones are not called)."""
    return list(conn.execute(SUBSCRIPTIONS_DUE_SQL).scalars())


def due_deliveries(conn: sa.Connection, subscription_id: int, limit: int) -> list[Due]:
    """One subscription's due deliveries, oldest first."""
    rows = conn.execute(DUE_SQL, {"subscription_id": subscription_id, "limit": limit})
    return [
        Due(
            row.outbox_id,
            row.delivery_id,
            row.update_id,
            row.subscription_id,
            row.url,
            (row.secret,) if row.previous_secret is None else (row.secret, row.previous_secret),
            # The body is signed byte for byte; jsonb's text form is canonical and stable.
            row.body.encode(),
            row.attempts,
        )
        for row in rows
    ]


# One attempt, by primary key (a join with a recordset of outcomes would let the planner scan
# the whole outbox, which keeps every delivery, for each attempt).
RECORD_SQL = sa.text("""
    WITH updated AS (
        UPDATE webhook_outbox SET
            attempts = attempts + 1,
            state = CASE WHEN :ok THEN 'delivered'
                         WHEN attempts + 1 >= :max_attempts THEN 'failed'
                         ELSE 'pending' END,
            finished_at = CASE WHEN :ok OR attempts + 1 >= :max_attempts THEN now() END,
            last_error = CASE WHEN :ok THEN NULL
                              WHEN attempts + 1 >= :max_attempts
                              THEN 'gave up after ' || (attempts + 1) || ' attempts: '
                                   || CAST(:error AS text)
                              ELSE CAST(:error AS text) END,
            next_attempt_at = now() + make_interval(secs => :retry_in)
        WHERE outbox_id = :outbox_id AND state = 'pending'
        RETURNING outbox_id, attempts, subscription_id
    ), late AS (
        -- given up meanwhile (its subscription deleted or disabled while the POST was out):
        -- the delivery stays given up, but the attempt, made all the same, is kept
        SELECT outbox_id, attempts + 1 AS attempts FROM webhook_outbox
        WHERE outbox_id = :outbox_id AND NOT EXISTS (SELECT 1 FROM updated)
    ), latest AS (
        UPDATE webhook_subscriptions s SET last_attempt_at = now(),
            last_attempt_status = :status_code, last_attempt_error = :error
        FROM updated u WHERE s.subscription_id = u.subscription_id
    )
    INSERT INTO webhook_attempts (outbox_id, attempt, status_code, error, duration_ms, run_id)
    SELECT outbox_id, attempts, :status_code, :error, :duration_ms, :run_id FROM updated
    UNION ALL
    SELECT outbox_id, attempts, :status_code, :error, :duration_ms, :run_id FROM late
""")


def record_outcome(
    conn: sa.Connection, outcome: Outcome, *, max_attempts: int, run_id: str | None
) -> None:
    """Every attempt is kept (and the subscription's latest shown on it); a failed one is
    retried after its ``retry_in``, until ``max_attempts``, then given up with the reason. An
    attempt whose delivery was given up while it was out (the subscription deleted) is kept
    too; the delivery stays given up.

    The subscription row is locked before the outbox row, the order every other writer of both
    keeps (deleting, disabling, queuing): RECORD_SQL alone would take them the other way round
    and deadlock with a DELETE of the subscription that holds its row and waits for this one."""
    conn.execute(
        sa.text(
            "SELECT 1 FROM webhook_subscriptions WHERE subscription_id ="
            " (SELECT subscription_id FROM webhook_outbox WHERE outbox_id = :outbox_id)"
            " FOR NO KEY UPDATE"
        ),
        {"outbox_id": outcome.outbox_id},
    )
    conn.execute(
        RECORD_SQL,
        {
            "outbox_id": outcome.outbox_id,
            "ok": outcome.ok,
            "status_code": outcome.status_code,
            "error": outcome.error,
            "duration_ms": outcome.duration_ms,
            "retry_in": outcome.retry_in,
            "max_attempts": max_attempts,
            "run_id": run_id,
        },
    )


def outbox_summary(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(sa.text("SELECT state, count(*) FROM webhook_outbox GROUP BY state"))
    return {state: int(count) for state, count in rows}


def next_due_at(conn: sa.Connection) -> datetime | None:
    return conn.execute(
        sa.text("SELECT min(next_attempt_at) FROM webhook_outbox WHERE state = 'pending'")
    ).scalar_one()
