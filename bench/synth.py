"""A fast, set-based generator of big shops for the memory and history benchmarks.

Rows of the same kinds as the demo shop, written by ``INSERT … SELECT generate_series`` on the
server, so millions of rows take seconds. A *segment* of ``events`` print events is
``events / 4`` impositions, each ganging two single-version jobs of two files each (jobs,
mappings, the planned print/coating/kiss_cut rows of jobs and impositions), and four "print OS"
rows per imposition: one lot ABORTED in every tenth imposition, the rest PRINTED, markers
consecutive per imposition, event times one second apart. Segments appended one after another
continue the imposition numbers and markers, so a later segment is "new" work on new jobs
on top of an older, already processed history.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

EVENTS_PER_IMPOSITION = 4

_JOB = "(10000000 + j)::text || '_' || (1000 + j % 9000)::text"
_IMP = "'H-IMP-' || lpad(i::text, 8, '0')"

_LOGS = (
    f"""INSERT INTO imposition_file_mapping (imposition_id, file_id, created_at)
    SELECT {_IMP}, 'FILE_1_Labex_' || {_JOB} || '_' || f, now()
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) i, generate_series(0, 1) k, generate_series(1, 2) f,
         LATERAL (SELECT 2 * i + k AS j) x""",
    f"""INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id,
        sequence_order, required)
    SELECT {_JOB} || ':1:' || op, {_JOB}, '1', op, seq, true
    FROM generate_series(2 * CAST(:lo AS bigint), 2 * CAST(:hi AS bigint) + 1) j,
         (VALUES ('op001', 1), ('op003', 2), ('op006', 3)) o(op, seq)""",
    f"""INSERT INTO imposition_operations (imposition_operation_id, imposition_id, operation_id,
        sequence_order, required)
    SELECT {_IMP} || ':' || op, {_IMP}, op, seq, true
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) i, (VALUES ('op001', 1), ('op003', 2), ('op006', 3)) o(op, seq)""",
)
_JOBMANAGER = (
    f"""INSERT INTO jobs (job_id, customer, job_name, created_at)
    SELECT {_JOB}, 'Labex', 'bench job ' || j, now() - interval '400 days'
    FROM generate_series(2 * CAST(:lo AS bigint), 2 * CAST(:hi AS bigint) + 1) j""",
    f"""INSERT INTO "print OS" (name, status, marker, job_name, job_complete_time, copies)
    SELECT {_IMP}, CASE WHEN e = 0 AND i % 10 = 0 THEN 'ABORTED' ELSE 'PRINTED' END,
           m, {_IMP} || '.pdf',
           timestamp '2025-01-01' + make_interval(secs => m), 500
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) i, generate_series(0, 3) e,
         LATERAL (SELECT CAST(:marker0 AS bigint) + (i - CAST(:lo AS bigint)) * 4 + e AS m) x""",
)


@dataclass
class Segment:
    first_imposition: int
    impositions: int
    first_marker: int

    @property
    def events(self) -> int:
        return self.impositions * EVENTS_PER_IMPOSITION

    @property
    def last_marker(self) -> int:
        return self.first_marker + self.events - 1


def append_segment(
    jobmanager: sa.Engine, logs: sa.Engine, events: int, after: Segment | None = None
) -> Segment:
    """Append a segment of about ``events`` print events after ``after`` (or at the start)."""
    impositions = max(1, events // EVENTS_PER_IMPOSITION)
    first = after.first_imposition + after.impositions if after else 1
    marker0 = after.last_marker + 1 if after else 1
    params = {"lo": first, "hi": first + impositions - 1, "marker0": marker0}
    with logs.begin() as conn:
        for statement in _LOGS:
            conn.execute(sa.text(statement), params)
    with jobmanager.begin() as conn:
        for statement in _JOBMANAGER:
            conn.execute(sa.text(statement), params)
    analyze(jobmanager, logs)
    return Segment(first, impositions, marker0)


def analyze(jobmanager: sa.Engine, logs: sa.Engine) -> None:
    """What autovacuum would have done by the time the next events arrive."""
    for engine in (jobmanager, logs):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
