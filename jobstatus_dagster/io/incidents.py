"""Alert incidents (sql/jobmanager/0019_alert_incidents.sql): at most one open incident per
subject, opened by the first sign of trouble, cleared once, each alert recorded as sent. The alert
sensor's whole state about what it told whom lives here, not in its cursor: a reset cursor or a
redeployed code location never sends an incident's alert twice."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class Incident:
    incident_id: int
    subject: str
    summary: str
    detail: dict[str, Any]
    started_at: datetime
    last_failed_at: datetime
    failures: int
    cleared_at: datetime | None
    cleared_by: str | None
    opened_sent_at: datetime | None
    cleared_sent_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.cleared_at is None


# Subjects of the watchdog (`jobstatus watchdog`): the services the alerts sensor depends on.
WATCHDOG_PREFIX = "service:"

_TABLE = sa.table("alert_incidents", *(sa.column(name) for name in Incident.__dataclass_fields__))


def _incidents(result: sa.CursorResult) -> list[Incident]:
    return [Incident(**row) for row in result.mappings()]


def open_incidents(conn: sa.Connection) -> dict[str, Incident]:
    """subject → its open incident."""
    rows = conn.execute(sa.select(_TABLE).where(_TABLE.c.cleared_at.is_(None)))
    return {incident.subject: incident for incident in _incidents(rows)}


def all_incidents(conn: sa.Connection) -> list[Incident]:
    return _incidents(conn.execute(sa.select(_TABLE).order_by(_TABLE.c.incident_id)))


def record_failure(
    conn: sa.Connection, subject: str, summary: str, detail: dict[str, Any], at: datetime
) -> None:
    """Open the subject's incident at ``at``, or add this sign to the open one (a sign seen
    again, with no later time, is not counted twice)."""
    conn.execute(
        sa.text(
            "INSERT INTO alert_incidents (subject, summary, detail, started_at, last_failed_at)"
            " VALUES (:subject, :summary, CAST(:detail AS jsonb), :at, :at)"
            " ON CONFLICT (subject) WHERE cleared_at IS NULL DO UPDATE SET"
            "  failures = alert_incidents.failures"
            "   + CAST(EXCLUDED.last_failed_at > alert_incidents.last_failed_at AS integer),"
            "  last_failed_at = greatest(alert_incidents.last_failed_at, EXCLUDED.last_failed_at)"
        ),
        {"subject": subject, "summary": summary, "detail": json.dumps(detail), "at": at},
    )


def clear(
    conn: sa.Connection,
    subject: str,
    at: datetime,
    cleared_by: str,
    only_if_failed_before: datetime | None = None,
) -> bool:
    """Clear the subject's open incident; with ``only_if_failed_before``, only when its latest
    sign is older than that (a run asked for before the last failure proves nothing)."""
    result = conn.execute(
        sa.text(
            "UPDATE alert_incidents SET cleared_at = greatest(:at, last_failed_at),"
            " cleared_by = :by WHERE subject = :subject AND cleared_at IS NULL"
            " AND (CAST(:before AS timestamptz) IS NULL OR last_failed_at < :before)"
        ),
        {"subject": subject, "at": at, "by": cleared_by, "before": only_if_failed_before},
    )
    return result.rowcount > 0


def unsent(conn: sa.Connection, limit: int, *, watchdog: bool = False) -> list[Incident]:
    """Incidents whose opening or clearing alert has not gone out yet, oldest first: the
    watchdog's own (``WATCHDOG_PREFIX``) or all the others. Each sender sends only its share, so
    the alerts sensor and the watchdog never send one alert twice between them."""
    c = _TABLE.c
    own = c.subject.startswith(WATCHDOG_PREFIX, autoescape=True)
    rows = conn.execute(
        sa.select(_TABLE)
        .where(
            c.opened_sent_at.is_(None) | (c.cleared_at.isnot(None) & c.cleared_sent_at.is_(None))
        )
        .where(own if watchdog else ~own)
        .order_by(c.incident_id)
        .limit(limit)
    )
    return _incidents(rows)


def mark_sent(conn: sa.Connection, incident: Incident, at: datetime) -> None:
    """What ``incident`` said has gone out: its opening, and its clearing if it had cleared."""
    conn.execute(
        sa.text(
            "UPDATE alert_incidents SET opened_sent_at = coalesce(opened_sent_at, :at),"
            " cleared_sent_at = CASE WHEN :cleared THEN :at ELSE cleared_sent_at END"
            " WHERE incident_id = :id"
        ),
        {"at": at, "cleared": incident.cleared_at is not None, "id": incident.incident_id},
    )
