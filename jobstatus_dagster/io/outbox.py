"""Webhook subscriptions and their outbox: what is owed to whom, and what happened to it.

The outbox rows themselves are written by the audit's own statements, in the writer's jobmanager
transaction (R18; triggers in sql/jobmanager/0013_integration.sql): a status change is owed to a
receiver exactly when it committed. This module reads what is due and records each attempt,
set-based: one query picks the due deliveries, one statement records a batch of outcomes.
"""

from __future__ import annotations

import json
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
    secret: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class Outcome:
    """One attempt's result; ``status_code`` None when no answer came (refused, timed out)."""

    outbox_id: int
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int


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


# What the API shows of a subscription: never its secret.
_SUBSCRIPTION_VIEW = (
    "SELECT s.subscription_id AS id, s.url, s.operations, s.created_at,"
    " count(*) FILTER (WHERE o.state = 'pending') AS pending,"
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


# Only the head of each (subscription, job) queue may go: a job's changes arrive in order. At
# most :per_subscription heads of one subscription per pass, taken in turns (every
# subscription's first, then every second...), so one subscriber's backlog cannot fill a pass.
DUE_SQL = sa.text("""
    SELECT d.outbox_id, d.delivery_id::text AS delivery_id, d.update_id, d.subscription_id,
           s.url, s.secret, jobstatus_delivery_body(d.o)::text AS body, d.attempts
    FROM (SELECT h.*, row_number() OVER (PARTITION BY h.subscription_id
                                         ORDER BY h.outbox_id) AS turn
          FROM (SELECT DISTINCT ON (subscription_id, job_id) outbox_id, delivery_id,
                       subscription_id, update_id, attempts, next_attempt_at, o
                FROM webhook_outbox o WHERE state = 'pending'
                ORDER BY subscription_id, job_id, outbox_id) h
          WHERE h.next_attempt_at <= now()) d
    JOIN webhook_subscriptions s USING (subscription_id)
    WHERE d.turn <= :per_subscription
    ORDER BY d.turn, d.outbox_id
    LIMIT :limit
""")


def due_deliveries(conn: sa.Connection, limit: int, per_subscription: int) -> list[Due]:
    return [
        Due(
            row.outbox_id,
            row.delivery_id,
            row.update_id,
            row.subscription_id,
            row.url,
            row.secret,
            # The body is signed byte for byte; jsonb's text form is canonical and stable.
            row.body.encode(),
            row.attempts,
        )
        for row in conn.execute(DUE_SQL, {"limit": limit, "per_subscription": per_subscription})
    ]


RECORD_SQL = sa.text("""
    WITH o AS (
        SELECT * FROM jsonb_to_recordset(CAST(:outcomes AS jsonb))
            AS t(outbox_id bigint, ok boolean, status_code integer, error text,
                 duration_ms integer)
    ), updated AS (
        UPDATE webhook_outbox w SET
            attempts = w.attempts + 1,
            state = CASE WHEN o.ok THEN 'delivered'
                         WHEN w.attempts + 1 >= :max_attempts THEN 'failed'
                         ELSE 'pending' END,
            finished_at = CASE WHEN o.ok OR w.attempts + 1 >= :max_attempts THEN now() END,
            last_error = CASE WHEN o.ok THEN NULL
                              WHEN w.attempts + 1 >= :max_attempts
                              THEN 'gave up after ' || (w.attempts + 1) || ' attempts: '
                                   || o.error
                              ELSE o.error END,
            next_attempt_at = now() + make_interval(secs => least(
                CAST(:backoff_max AS double precision),
                CAST(:backoff AS double precision) * power(2, w.attempts)))
        FROM o WHERE w.outbox_id = o.outbox_id AND w.state = 'pending'
        RETURNING w.outbox_id, w.attempts
    )
    INSERT INTO webhook_attempts (outbox_id, attempt, status_code, error, duration_ms, run_id)
    SELECT u.outbox_id, u.attempts, o.status_code, o.error, o.duration_ms, :run_id
    FROM updated u JOIN o USING (outbox_id)
""")


def record_outcomes(
    conn: sa.Connection,
    outcomes: list[Outcome],
    *,
    max_attempts: int,
    backoff_seconds: float,
    backoff_max_seconds: float,
    run_id: str | None,
) -> None:
    """Every attempt is kept; a failed one is retried after an exponential backoff, until
    ``max_attempts``, then given up with the reason."""
    if not outcomes:
        return
    payload = json.dumps(
        [
            {
                "outbox_id": o.outbox_id,
                "ok": o.ok,
                "status_code": o.status_code,
                "error": o.error,
                "duration_ms": o.duration_ms,
            }
            for o in outcomes
        ]
    )
    conn.execute(
        RECORD_SQL,
        {
            "outcomes": payload,
            "max_attempts": max_attempts,
            "backoff": backoff_seconds,
            "backoff_max": backoff_max_seconds,
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
