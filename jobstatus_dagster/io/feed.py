"""Reads for the shop's other systems: the change feed, job lists, and how fresh they are.

Every page is a fixed number of set-based queries whatever its size: one for the rows, one for
``as_of``. Exports walk the same keyset pages one after the other, so memory stays bounded by a
page whatever the export's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from jobstatus_dagster.core.identifiers import normalise_operation, version_sort_key
from jobstatus_dagster.io.compose import Identifier, composed, expression, trimmed
from jobstatus_dagster.source import SOURCES

# Job-list statuses: the three a print state can have (R11), and 'pending' for no status yet.
STATE_STATUSES = ("completed", "partial", "aborted")
PENDING = "pending"
JOB_STATUSES = (*STATE_STATUSES, PENDING)
EXPORT_BATCH = 5000

FEED_COLUMNS = (
    "update_id",
    "event",
    "job_id",
    "version_tag",
    "operation",
    "status",
    "applied",
    "printed_count",
    "aborted_count",
    "total_count",
    "notes",
    "event_time",
    "processed_at",
    "source_type",
    "source_id",
    "source_marker",
    "previous_update_id",
    "current",
    "withdrawn_at",
    "run_id",
)

# R25: the feed is the change stream (sql/jobmanager/0016): one entry per change of a (job,
# version, operation)'s state, never updated. Ids are drawn under the writers' lock, gap-free,
# so update_id order is commit order: a reader that saw id n never later sees a new id below n.
# ``current``: no later change of the same key exists (probes the key's index).
FEED_SQL = sa.text(
    "SELECT c.change_id AS update_id, c.event, c.job_id, c.version_tag, c.operation, c.status,"
    " c.event = 'status' AS applied, c.printed_count, c.aborted_count, c.total_count, c.notes,"
    " c.event_time, c.recorded_at AS processed_at, c.source_type, c.source_id,"
    " c.source_marker, c.previous_change_id AS previous_update_id,"
    " NOT EXISTS (SELECT 1 FROM job_status_changes l WHERE l.job_id = c.job_id"
    "   AND l.version_tag = c.version_tag AND l.operation = c.operation"
    "   AND l.change_id > c.change_id) AS current,"
    " CASE WHEN c.event = 'withdrawn' THEN c.recorded_at END AS withdrawn_at, c.run_id"
    " FROM job_status_changes c WHERE c.change_id > :after ORDER BY c.change_id LIMIT :limit"
)

AS_OF_SQL = sa.text(
    "SELECT marker_type, last_processed_id, last_processed_at FROM processing_markers"
)

# The candidate job ids of one page, per kind of filter; each branch is a keyset scan of an
# index in job-id order that stops at the page's size, and the page is the first ``limit`` of
# their union. Job ids compare trimmed (R4), as the writer compares them: our own tables hold
# trimmed ids; of the shop's ``jobs``, the rows already trimmed come through its own index on
# job_id, and the padded ones (few) through the partial hash index idx_jobs_padded_ids
# (sql/jobmanager/0014), so no page scans ``jobs``. Rows of ``jobs`` that trim alike
# ('7001_1', '7001_1 ') are one job: the page groups by the trimmed id. Each branch applies
# the filter ``{where}`` (on ``c.job_id``) before its limit.
_JOBS_BRANCHES = (
    "(SELECT c.job_id FROM jobs c WHERE c.job_id > :after AND c.job_id = {trim} {where}"
    " ORDER BY c.job_id LIMIT :limit)"
    " UNION ALL (SELECT c.job_id FROM (SELECT {trim} AS job_id FROM jobs"
    " WHERE job_id <> {trim}) c WHERE c.job_id > :after {where})"
)
_STATE_BRANCH = (
    "(SELECT DISTINCT c.job_id FROM job_operation_state c WHERE c.job_id > :after"
    " AND (CAST(:operation AS text) IS NULL OR c.operation = :operation) {where}"
    " ORDER BY c.job_id LIMIT :limit)"
)
_PAGE = "SELECT job_id FROM ({branches}) u GROUP BY job_id ORDER BY job_id LIMIT :limit"
_SINCE = (
    " AND (CAST(:since AS timestamp) IS NULL"
    " OR EXISTS (SELECT 1 FROM job_operation_state t WHERE t.job_id = c.job_id"
    " AND t.updated_at >= :since)"
    " OR EXISTS (SELECT 1 FROM job_print_state t WHERE t.job_id = c.job_id"
    " AND t.updated_at >= :since)"
    # A job whose state was withdrawn as a whole has no state row left to carry the time.
    " OR EXISTS (SELECT 1 FROM job_status_updates t WHERE t.job_id = c.job_id"
    " AND t.withdrawn_at >= :since))"
)
_ANY_JOB = " AND CAST(:operation AS text) IS NULL"  # the jobs table says nothing of operations
# OFFSET 0 keeps the test a probe of the state's key per candidate: the planner, which cannot
# tell how few ids are padded, would otherwise hash the whole state table for the padded branch.
_NOT_DONE = (
    " AND NOT EXISTS (SELECT 1 FROM job_operation_state s WHERE s.job_id = c.job_id"
    " AND s.operation = :operation AND s.status IS NOT NULL OFFSET 0)"
)
PAGE_STATUS = (
    "SELECT job_id FROM job_operation_state c WHERE operation = :operation AND status = :status"
    " AND job_id > :after {since} ORDER BY job_id LIMIT :limit"
)
# What a list shows of each job of the page, in one statement with the page. The ``jobs`` row
# of a trimmed id is found through idx_jobs_job_id_trimmed (R4); where the shop holds the id
# twice, the row spelled exactly so wins, then the lowest spelling. ``jobs.operations`` that is
# not a JSON object (null, a string, an array, a number: R20) shows as no flags.
JOBS_SQL = """
WITH page AS ({page})
SELECT p.job_id, j.found IS NOT NULL AS in_jobs_table,
       CASE WHEN jsonb_typeof(j.operations) = 'object' THEN j.operations ELSE '{{}}'::jsonb END
           AS current_status,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
           'operation', s.operation, 'status', s.status, 'value', s.value,
           'version_tag', s.version_tag, 'completed_by', s.source_type,
           'source_id', s.source_id, 'event_time', s.event_time, 'notes', s.notes,
           'updated_at', s.updated_at) ORDER BY s.operation)
         FROM job_operation_state s WHERE s.job_id = p.job_id), '[]'::jsonb) AS operations,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
           'version_tag', v.version_tag, 'status', v.status, 'printed', v.printed_count,
           'aborted', v.aborted_count, 'total', v.total_count, 'highest', v.highest,
           'notes', v.notes, 'event_time', v.event_time, 'updated_at', v.updated_at))
         FROM job_print_state v WHERE v.job_id = p.job_id), '[]'::jsonb) AS versions,
       GREATEST((SELECT max(updated_at) FROM job_operation_state s WHERE s.job_id = p.job_id),
                (SELECT max(updated_at) FROM job_print_state v WHERE v.job_id = p.job_id))
           AS updated_at
FROM page p LEFT JOIN LATERAL (
    SELECT true AS found, j.operations FROM jobs j WHERE {jobs_trimmed} = p.job_id
    ORDER BY jsonb_typeof(j.operations) IS NOT DISTINCT FROM 'object' DESC,
             j.job_id = p.job_id DESC, j.job_id LIMIT 1) j ON true
ORDER BY p.job_id
"""
_TRIMMED_JOB_ID = trimmed(Identifier("job_id"))


def _where(*conditions: str) -> sql.SQL:
    return expression("".join(conditions))


def _jobs_statement(page: sql.Composable) -> sa.TextClause:
    """A page query (constants only) inside the list's statement; no value is ever in the text."""
    return composed(JOBS_SQL, page=page, jobs_trimmed=trimmed(Identifier("j", "job_id")))


def _page(*branches: sql.Composable) -> sql.Composed:
    return sql.SQL(_PAGE).format(branches=sql.SQL(" UNION ALL ").join(branches))


def _jobs_branches(where: sql.SQL) -> sql.Composed:
    return sql.SQL(_JOBS_BRANCHES).format(trim=_TRIMMED_JOB_ID, where=where)


JOBS_ANY = _jobs_statement(
    _page(
        _jobs_branches(_where(_ANY_JOB, _SINCE)),
        sql.SQL(_STATE_BRANCH).format(where=_where(_SINCE)),
    )
)
JOBS_STATUS = _jobs_statement(sql.SQL(PAGE_STATUS).format(since=_where(_SINCE)))
JOBS_PENDING = _jobs_statement(_page(_jobs_branches(_where(_NOT_DONE, _SINCE))))

# Every job id a list shows (R4: trimmed, each once), in list order; for checks that compare the
# read side with the state tables.
KNOWN_JOB_IDS_SQL = composed(
    "SELECT job_id FROM (SELECT {trim} AS job_id FROM jobs"
    " UNION SELECT job_id FROM job_operation_state) c WHERE job_id > '' ORDER BY job_id",
    trim=_TRIMMED_JOB_ID,
)

KNOWN_OPERATIONS_SQL = sa.text("SELECT DISTINCT operation FROM operation_codes")


@dataclass(frozen=True)
class JobFilter:
    """The job list's filters; ``status`` without ``operation`` is about ``print``."""

    status: str | None = None
    operation: str | None = None
    updated_since: datetime | None = None

    def query(self) -> tuple[sa.TextClause, dict[str, Any]]:
        operation = self.operation or ("print" if self.status else None)
        params = {"operation": operation, "status": self.status, "since": self.updated_since}
        if self.status == PENDING:
            return JOBS_PENDING, params
        if self.status is not None:
            return JOBS_STATUS, params
        return JOBS_ANY, params


def read_as_of(conn: sa.Connection) -> dict[str, dict[str, Any]]:
    """Per source: the marker processed up to, and when; what any answer is as fresh as."""
    rows = {row.marker_type: row for row in conn.execute(AS_OF_SQL)}
    as_of: dict[str, dict[str, Any]] = {}
    for source in SOURCES:
        row = rows.get(source.marker_type)
        as_of[source.name] = {
            "marker": int(row.last_processed_id) if row else 0,
            "processed_at": row.last_processed_at if row else None,
        }
    return as_of


def read_feed(conn: sa.Connection, after: int, limit: int) -> list[dict[str, Any]]:
    """Changes past ``after``, ascending: one page of the change feed (R25)."""
    return [
        dict(row) for row in conn.execute(FEED_SQL, {"after": after, "limit": limit}).mappings()
    ]


def read_jobs(
    conn: sa.Connection, job_filter: JobFilter, after: str, limit: int
) -> list[dict[str, Any]]:
    """One keyset page of jobs past ``after`` (job-id order) with their state."""
    sql, params = job_filter.query()
    jobs = [
        dict(row)
        for row in conn.execute(sql, {**params, "after": after, "limit": limit}).mappings()
    ]
    for job in jobs:
        job["versions"] = sorted(job["versions"], key=lambda v: version_sort_key(v["version_tag"]))
    return jobs


def known_operations(logs: sa.Connection) -> set[str]:
    """Operation names the shop has (operation_codes, R8), print among them, normalised as the
    writer and the scans normalise them (R7: the shop's 'Kiss Cut' is ``kiss_cut``)."""
    names = {
        normalise_operation(row[0])
        for row in logs.execute(KNOWN_OPERATIONS_SQL)
        if isinstance(row[0], str)
    }
    return (names - {""}) | {"print"}


def known_job_ids(conn: sa.Connection) -> list[str]:
    """Every job id the job list shows, trimmed (R4), once each, in the list's order: those of
    ``jobs`` and those jobstatus holds an operation state for. ``read_job_status`` answers for
    each of them."""
    return [row[0] for row in conn.execute(KNOWN_JOB_IDS_SQL)]


def export_feed(engine: sa.Engine, after: int, batch: int = EXPORT_BATCH) -> Iterator[list[dict]]:
    """Every change past ``after``, a page at a time (one short query per page)."""
    while True:
        with engine.connect() as conn:
            rows = read_feed(conn, after, batch)
        if not rows:
            return
        yield rows
        after = rows[-1]["update_id"]


def export_jobs(
    engine: sa.Engine, job_filter: JobFilter, after: str, batch: int = EXPORT_BATCH
) -> Iterator[list[dict]]:
    """Every job past ``after`` that the filter keeps, a page at a time."""
    while True:
        with engine.connect() as conn:
            jobs = read_jobs(conn, job_filter, after, batch)
        if not jobs:
            return
        yield jobs
        after = jobs[-1]["job_id"]
