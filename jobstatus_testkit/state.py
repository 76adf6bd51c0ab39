"""What the product wrote, minus what legitimately differs between two runs of the same backlog
(run ids, write times): equal for two databases that processed the same rows to the same effect.
The tests compare it with a control run's, and so does the fault suite."""

from __future__ import annotations

import sqlalchemy as sa

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_testkit.databases import engines

STATE_SQL = {
    "jm": {
        "job_status_updates": "SELECT source_type, source_id, job_id, version_tag, operation,"
        " status, printed_count, aborted_count, total_count, applied, notes, event_time"
        " FROM job_status_updates",
        "processing_failures": "SELECT source_type, source_id, reason, subject, retryable,"
        " attempts, resolved_at IS NULL AS open FROM processing_failures",
        "job_operation_state": "SELECT job_id, operation, value, status, version_tag,"
        " precedence, event_time, source_type, source_id, notes FROM job_operation_state",
        "jobs": "SELECT job_id, operations::text FROM jobs",
        "processed_source_rows": "SELECT source_type, source_id, marker FROM processed_source_rows",
        "processing_markers": "SELECT marker_type, last_processed_id FROM processing_markers",
    },
    "logs": {
        "job_operations": "SELECT * FROM job_operations",
        "imposition_operations": "SELECT * FROM imposition_operations",
    },
}


def read_state(
    jm: sa.Engine, logs: sa.Engine, tables: tuple[str, ...] | None = None
) -> dict[str, list[str]]:
    """Each table of the projection (or of ``tables``) as its sorted rows' reprs."""
    state: dict[str, list[str]] = {}
    for db, queries in STATE_SQL.items():
        with (jm if db == "jm" else logs).connect() as conn:
            for name, sql in queries.items():
                if tables is None or name in tables:
                    rows = conn.execute(sa.text(sql)).all()
                    state[name] = sorted(repr(tuple(r)) for r in rows)
    return state


def state_of(urls: DatabaseUrls, tables: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    with engines(urls) as (jm, logs):
        return read_state(jm, logs, tables)
