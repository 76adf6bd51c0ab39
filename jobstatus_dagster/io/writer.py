"""Applying an UpdatePlan: logs first, then one jobmanager transaction (R18).

Every statement is set-based over a temp table filled by COPY, so a run costs a fixed
number of round trips whatever its size. Every write is an upsert or guarded UPDATE keyed
by its source (R15, R17), so re-running a window after a crash at any point repairs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa

from jobstatus_dagster.core.plan import FAILURE_COLUMNS, MARKER_TYPES, Sweep, UpdatePlan
from jobstatus_dagster.faults import crash_point, transient_point
from jobstatus_dagster.io.sources import load_operation_codes

# R15 rank of what a row already holds, for operation name column `op` and writer column `by`.
_HELD_RANK = (
    "CASE WHEN {by} IS NULL THEN -1 WHEN ({op} = 'print') = ({by} = 'print_os') THEN 1 ELSE 0 END"
)
# A new write wins over what is held (R15); state-based writes skip the event-time guard.
_WINS = (
    "({new}.precedence > {held_rank} OR ({new}.precedence = {held_rank} AND ({new}.state_based"
    " OR ({new}.event_time, {new}.source_id) >= (COALESCE({held}.{time}, '-infinity'::timestamp),"
    " COALESCE({held}.source_id, -1)))))"
)

_TARGET_TEMP_COLUMNS = """
    status text, event_time timestamp, source_type text, source_id bigint, notes text,
    precedence int, state_based boolean"""

_TEMP_TABLES = {
    "tmp_imposition_ops": f"imposition_id text, operation text, operation_id text, {_TARGET_TEMP_COLUMNS}",
    "tmp_job_ops": f"job_id text, version_tag text, operation text, operation_id text, {_TARGET_TEMP_COLUMNS}",
    "tmp_job_state": f"job_id text, operation text, value boolean, version_tag text, {_TARGET_TEMP_COLUMNS}",
    "tmp_audit": """source_type text, source_id bigint, job_id text, version_tag text, operation text,
        status text, printed_count int, aborted_count int, total_count int, notes text,
        event_time timestamp, precedence int, state_based boolean""",
    "tmp_failures": "source_type text, source_id bigint, reason text, subject text, detail text, retryable boolean",
    "tmp_processed": "source_id bigint, marker bigint, kind text",
}


@dataclass
class WriteReport:
    """What one write changed; becomes run metadata."""

    marker_before: int = 0
    marker_after: int = 0
    imposition_rows_updated: int = 0
    job_operation_rows_updated: int = 0
    job_states_changed: int = 0
    jobs_updated: int = 0
    audit_rows_written: int = 0
    failures_recorded: int = 0
    failures_resolved: int = 0
    rows_marked_processed: int = 0
    missing_rows: list[str] = field(default_factory=list)

    def tables_changed(self) -> dict[tuple[str, ...], int]:
        """Rows changed per table we write, keyed by asset key path."""
        return {
            ("logs", "imposition_operations"): self.imposition_rows_updated,
            ("logs", "job_operations"): self.job_operation_rows_updated,
            ("jobmanager", "jobs_operations"): self.jobs_updated,
            ("jobmanager", "job_status_updates"): self.audit_rows_written,
            ("jobmanager", "processing_failures"): self.failures_recorded + self.failures_resolved,
        }

    def as_metadata(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


_INTEGER_COLUMNS = frozenset(
    {"source_id", "marker", "precedence", "printed_count", "aborted_count", "total_count"}
)
_COPY_NULL = "\\N"
# COPY's text format: backslash, tab, newline and carriage return inside a value are escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_values(series: pd.Series, integer: bool) -> list[str]:
    """One column as COPY text values, converted column-wise (no per-value Python dispatch
    except escaping, which only runs when a value needs it). Integer columns stay integers
    even where a left join made them float."""
    missing = series.isna().to_numpy()
    if integer:
        numbers = series.astype("Int64").to_numpy(dtype="int64", na_value=0)
        values = numbers.astype(str).astype(object)
    elif pd.api.types.is_bool_dtype(series):
        flags = series.to_numpy(dtype=bool, na_value=False)
        values = np.where(flags, "t", "f").astype(object)
    elif pd.api.types.is_datetime64_any_dtype(series):
        stamps = series.to_numpy(dtype="datetime64[us]")
        values = np.datetime_as_string(stamps, unit="us").astype(object)
    else:
        values = series.astype("string").fillna("").to_numpy(dtype=object)
        if any(ch in "".join(values) for ch in "\\\t\n\r"):
            values = np.array([v.translate(_COPY_ESCAPES) for v in values], dtype=object)
    values[missing] = _COPY_NULL
    return values.tolist()


def copy_text(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """The frame as the body of a COPY … FROM STDIN in text format."""
    cols = [_copy_values(frame[name], name in _INTEGER_COLUMNS) for name in columns]
    return "".join(line + "\n" for line in map("\t".join, zip(*cols, strict=True)))


def _copy_into(
    conn: sa.Connection,
    table: str,
    frame: pd.DataFrame,
    columns: Sequence[str],
    analyze: bool = False,
) -> None:
    """A temp table holding the frame. ``analyze`` for the small tables that anti-joins read:
    without statistics (autovacuum never analyses temp tables) the R20 resolution UPDATE took
    2 s to 6.8 s per scan window, growing; with them it stays under 0.3 s. The audit table is
    left alone: analysing 45,000 rows costs more than it saves."""
    conn.execute(sa.text(f"CREATE TEMP TABLE {table} ({_TEMP_TABLES[table]}) ON COMMIT DROP"))
    if frame.empty:
        return
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            copy.write(copy_text(frame, columns))
        if analyze:
            cur.execute(f"ANALYZE {table}")


def _with_operation_ids(
    frame: pd.DataFrame, codes: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """R8: attach operation_id; rows whose operation has no code are failures, not writes."""
    merged = frame.merge(codes, on="operation", how="left")
    unmapped = merged[merged["operation_id"].isna()]
    failures = pd.DataFrame(
        {
            "source_type": unmapped["source_type"],
            "source_id": unmapped["source_id"],
            "reason": "unmapped_operation",
            "subject": unmapped["operation"],
            "detail": "operation "
            + unmapped["operation"].astype("string")
            + " has no operation_id in operation_codes",
            "retryable": False,
        },
        columns=FAILURE_COLUMNS,
    )
    return merged[merged["operation_id"].notna()].reset_index(drop=True), failures


def _update_logs_table(
    conn: sa.Connection, table: str, temp: str, keys: Sequence[str], frame: pd.DataFrame
) -> tuple[int, pd.DataFrame]:
    """Guarded UPDATE of one *_operations table (R15); rows that do not exist are failures (R16)."""
    columns = [
        *keys,
        "operation",
        "operation_id",
        "status",
        "event_time",
        "source_type",
        "source_id",
        "notes",
        "precedence",
        "state_based",
    ]
    _copy_into(conn, temp, frame, columns)
    if frame.empty:
        return 0, pd.DataFrame(columns=FAILURE_COLUMNS)
    match = " AND ".join(f"o.{k} = t.{k}" for k in [*keys, "operation_id"])
    wins = _WINS.format(
        new="t",
        held="o",
        time="completed_at",
        held_rank=_HELD_RANK.format(by="o.completed_by", op="t.operation"),
    )
    updated = conn.execute(
        sa.text(f"""
        UPDATE {table} o SET completed_at = t.event_time, completed_by = t.source_type,
               source_id = t.source_id, status = t.status, notes = t.notes
        FROM {temp} t
        WHERE {match} AND {wins}
          AND (o.completed_at, o.completed_by, o.source_id, o.status, o.notes)
              IS DISTINCT FROM (t.event_time, t.source_type, t.source_id, t.status, t.notes)
    """)
    ).rowcount  # noqa: S608 - constant identifiers
    key_list = ", ".join(f"t.{k}" for k in keys)
    missing = pd.read_sql(
        sa.text(f"""
        SELECT t.source_type, t.source_id, concat_ws('/', {key_list}, t.operation) AS subject
        FROM {temp} t WHERE NOT EXISTS (SELECT 1 FROM {table} o WHERE {match})
    """),
        conn,
    )  # noqa: S608
    failures = missing.assign(
        reason="missing_operation_row",
        detail=f"no {table} row for "
        + missing["subject"].astype("string")
        + "; not invented (R16)",
        retryable=False,
    )[FAILURE_COLUMNS]
    return int(updated), failures


def write_logs(conn: sa.Connection, plan: UpdatePlan) -> tuple[WriteReport, pd.DataFrame]:
    """imposition_operations and job_operations (logs); returns the failures found on the way."""
    report = WriteReport()
    codes = load_operation_codes(conn).dropna(subset=["operation_id"])
    imposition_ops, unmapped_a = _with_operation_ids(plan.imposition_ops, codes)
    job_ops, unmapped_b = _with_operation_ids(plan.job_ops, codes)
    report.imposition_rows_updated, missing_a = _update_logs_table(
        conn, "imposition_operations", "tmp_imposition_ops", ["imposition_id"], imposition_ops
    )
    report.job_operation_rows_updated, missing_b = _update_logs_table(
        conn, "job_operations", "tmp_job_ops", ["job_id", "version_tag"], job_ops
    )
    failures = pd.concat(
        [f for f in (unmapped_a, unmapped_b, missing_a, missing_b) if len(f)]
        or [pd.DataFrame(columns=FAILURE_COLUMNS)],
        ignore_index=True,
    )
    report.missing_rows = failures["subject"].astype(str).tolist()[:20]
    return report, failures


def lock_marker(conn: sa.Connection, source_type: str) -> int:
    """R19: one writer per source; held until the jobmanager transaction ends."""
    value = conn.execute(
        sa.text(
            "SELECT last_processed_id FROM processing_markers WHERE marker_type = :t FOR UPDATE"
        ),
        {"t": MARKER_TYPES[source_type]},
    ).scalar_one_or_none()
    if value is None:
        conn.execute(
            sa.text(
                "INSERT INTO processing_markers (marker_type, last_processed_id) VALUES (:t, 0)"
                " ON CONFLICT (marker_type) DO NOTHING"
            ),
            {"t": MARKER_TYPES[source_type]},
        )
        return lock_marker(conn, source_type)
    return int(value)


def write_jobmanager(
    conn: sa.Connection,
    plan: UpdatePlan,
    logs_failures: pd.DataFrame,
    run_id: str,
    report: WriteReport,
) -> WriteReport:
    """State, jobs.operations, audit, failures, processed rows and the marker: one transaction."""
    window = plan.window
    state_cols = [
        "job_id",
        "operation",
        "value",
        "version_tag",
        "status",
        "event_time",
        "source_type",
        "source_id",
        "notes",
        "precedence",
        "state_based",
    ]
    _copy_into(conn, "tmp_job_state", plan.job_state, state_cols)
    _copy_into(conn, "tmp_audit", plan.audit, list(plan.audit.columns))
    failures = pd.concat([plan.failures, logs_failures], ignore_index=True)
    # Hostile input must not break the unique index (btree rows are limited to ~2.7 kB).
    failures["subject"] = failures["subject"].astype("string").fillna("").str.slice(0, 200)
    failures["detail"] = failures["detail"].astype("string").str.slice(0, 2000)
    _copy_into(conn, "tmp_failures", failures, FAILURE_COLUMNS, analyze=True)
    _copy_into(conn, "tmp_processed", plan.processed, ["source_id", "marker", "kind"], analyze=True)
    params = {"run_id": run_id, "source_type": window.source_type}

    # R17 audit. A row already written keeps its verdict (`applied`, decided against the state
    # held when its event was first processed, R15); re-processing refreshes only its counts
    # (R21: a corrected mapping). New rows get their verdict now. Audit rows exist only for
    # source rows processed before (same transaction as processed_source_rows), so a window of
    # new rows skips the refresh: its join read the whole audit, growing with the history
    # (1.2 s per scan window at 850,000 audit rows, bench/README.md, third session).
    reprocessed = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM tmp_processed p JOIN processed_source_rows r"
            " ON r.source_type = :source_type AND r.source_id = p.source_id)"
        ),
        params,
    ).scalar_one()
    refreshed = 0
    if reprocessed:
        refreshed = conn.execute(
            sa.text("""
        UPDATE job_status_updates u SET status = a.status, printed_count = a.printed_count,
            aborted_count = a.aborted_count, total_count = a.total_count,
            notes = CASE WHEN u.applied THEN a.notes ELSE u.notes END,
            event_time = a.event_time, processed_at = now(), run_id = :run_id
        FROM tmp_audit a
        WHERE u.source_type = a.source_type AND u.source_id = a.source_id
          AND u.job_id = a.job_id AND u.version_tag = a.version_tag AND u.operation = a.operation
          AND (u.status, u.printed_count, u.aborted_count, u.total_count, u.event_time,
               CASE WHEN u.applied THEN a.notes ELSE u.notes END)
              IS DISTINCT FROM (a.status, a.printed_count, a.aborted_count, a.total_count,
                                a.event_time, u.notes)
    """),
            params,
        ).rowcount
    wins = _WINS.format(new="a", held="s", time="event_time", held_rank="s.precedence")
    inserted = conn.execute(
        sa.text(f"""
        INSERT INTO job_status_updates (source_type, source_id, job_id, version_tag, operation,
            status, printed_count, aborted_count, total_count, applied, notes, event_time, run_id)
        SELECT a.source_type, a.source_id, a.job_id, a.version_tag, a.operation, a.status,
               a.printed_count, a.aborted_count, a.total_count, applied,
               CASE WHEN applied THEN a.notes ELSE concat_ws('; ', a.notes, 'not applied: '
                    || s.source_type || ' #' || s.source_id || ' at ' || s.event_time
                    || ' holds ' || a.operation) END,
               a.event_time, :run_id
        FROM tmp_audit a
        LEFT JOIN job_operation_state s ON s.job_id = a.job_id AND s.operation = a.operation
        CROSS JOIN LATERAL (SELECT s.job_id IS NULL OR {wins} AS applied) w
        ON CONFLICT ON CONSTRAINT job_status_updates_source_key DO NOTHING
    """),
        params,
    ).rowcount
    report.audit_rows_written = refreshed + inserted

    # R15 state per (job, operation); jobs.operations is its projection.
    held_wins = _WINS.format(new="excluded", held="s", time="event_time", held_rank="s.precedence")
    report.job_states_changed = conn.execute(
        sa.text(f"""
        INSERT INTO job_operation_state AS s (job_id, operation, value, status, version_tag,
            precedence, state_based, event_time, source_type, source_id, notes)
        SELECT DISTINCT ON (job_id, operation) job_id, operation, value, status, version_tag,
               precedence, state_based, event_time, source_type, source_id, notes
        FROM tmp_job_state
        ORDER BY job_id, operation, precedence DESC, event_time DESC, source_id DESC,
                 version_tag DESC
        ON CONFLICT (job_id, operation) DO UPDATE SET value = excluded.value,
            status = excluded.status, version_tag = excluded.version_tag,
            precedence = excluded.precedence, state_based = excluded.state_based,
            event_time = excluded.event_time, source_type = excluded.source_type,
            source_id = excluded.source_id, notes = excluded.notes, updated_at = now()
        WHERE {held_wins}
          AND (s.value, s.status, s.version_tag, s.precedence, s.event_time, s.source_type,
               s.source_id, s.notes) IS DISTINCT FROM (excluded.value, excluded.status,
               excluded.version_tag, excluded.precedence, excluded.event_time,
               excluded.source_type, excluded.source_id, excluded.notes)
    """)
    ).rowcount  # noqa: S608

    report.jobs_updated = conn.execute(
        sa.text("""
        UPDATE jobs j SET operations = COALESCE(j.operations, '{}'::jsonb) || p.ops
        FROM (SELECT s.job_id, jsonb_object_agg(s.operation, s.value) AS ops
              FROM job_operation_state s
              WHERE s.job_id IN (SELECT job_id FROM tmp_job_state)
              GROUP BY s.job_id) p
        WHERE j.job_id = p.job_id AND NOT (COALESCE(j.operations, '{}'::jsonb) @> p.ops)
    """)
    ).rowcount

    # R16/R20: a job absent from jobs is skipped there and recorded, retryably (it may arrive).
    conn.execute(
        sa.text("""
        INSERT INTO tmp_failures (source_type, source_id, reason, subject, detail, retryable)
        SELECT DISTINCT a.source_type, a.source_id, 'missing_job', a.job_id,
               'job ' || a.job_id || ' is not in jobs; jobs.operations not written', true
        FROM tmp_audit a WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = a.job_id)
    """)
    )

    # A failure is re-counted only when its row came back as a retry (R20): re-processing a
    # window or a backfill that meets the same failure changes nothing (R17, R21).
    updated = conn.execute(
        sa.text("""
        UPDATE processing_failures f SET
            attempts = f.attempts + t.is_retry::int,
            last_attempt_at = CASE WHEN t.is_retry THEN now() ELSE f.last_attempt_at END,
            detail = t.detail, retryable = t.retryable, resolved_at = NULL, run_id = :run_id
        FROM (SELECT DISTINCT ON (x.source_type, x.source_id, x.reason, COALESCE(x.subject, ''))
                     x.source_type, x.source_id, x.reason, COALESCE(x.subject, '') AS subject,
                     x.detail, x.retryable, COALESCE(p.kind = 'retry', false) AS is_retry
              FROM tmp_failures x LEFT JOIN tmp_processed p ON p.source_id = x.source_id) t
        WHERE f.source_type = t.source_type AND f.source_id = t.source_id
          AND f.reason = t.reason AND f.subject = t.subject
          AND (t.is_retry OR f.resolved_at IS NOT NULL
               OR (f.detail, f.retryable) IS DISTINCT FROM (t.detail, t.retryable))
    """),
        params,
    ).rowcount
    inserted = conn.execute(
        sa.text("""
        INSERT INTO processing_failures (source_type, source_id, reason, subject, detail,
            retryable, run_id)
        SELECT DISTINCT ON (source_type, source_id, reason, COALESCE(subject, ''))
               source_type, source_id, reason, COALESCE(subject, ''), detail, retryable, :run_id
        FROM tmp_failures
        ON CONFLICT ON CONSTRAINT processing_failures_key DO NOTHING
    """),
        params,
    ).rowcount
    report.failures_recorded = updated + inserted

    # R20: a processed row's open failures that did not recur are resolved, not deleted.
    report.failures_resolved = conn.execute(
        sa.text("""
        UPDATE processing_failures f SET resolved_at = now(), run_id = :run_id
        WHERE f.source_type = :source_type AND f.resolved_at IS NULL
          AND f.source_id IN (SELECT source_id FROM tmp_processed)
          AND NOT EXISTS (SELECT 1 FROM tmp_failures t WHERE t.source_id = f.source_id
                          AND t.reason = f.reason AND COALESCE(t.subject, '') = f.subject)
    """),
        params,
    ).rowcount

    report.rows_marked_processed = conn.execute(
        sa.text("""
        INSERT INTO processed_source_rows (source_type, source_id, marker, run_id)
        SELECT :source_type, source_id, marker, :run_id FROM tmp_processed
        ON CONFLICT (source_type, source_id) DO NOTHING
    """),
        params,
    ).rowcount

    if window.sweep is not None:
        advance_sweep(conn, window.source_type, window.sweep)

    # R18/R21: the marker only moves forward, never across a gap below the window, and never
    # past the last row this run actually saw (a partition's range may reach beyond the data).
    conn.execute(
        sa.text("""
        UPDATE processing_markers SET last_processed_id = :to_marker,
               last_processed_at = now(), updated_at = now()
        WHERE marker_type = :marker_type AND last_processed_id >= :from_marker
          AND last_processed_id < :to_marker
    """),
        {
            "marker_type": MARKER_TYPES[window.source_type],
            "from_marker": window.from_marker,
            "to_marker": advance_to(plan),
        },
    )
    report.marker_after = int(
        conn.execute(
            sa.text("SELECT last_processed_id FROM processing_markers WHERE marker_type = :t"),
            {"t": MARKER_TYPES[window.source_type]},
        ).scalar_one()
    )
    return report


def advance_sweep(conn: sa.Connection, source_type: str, sweep: Sweep) -> bool:
    """R19: the next sweep starts where this slice ended. Only from where this slice started,
    so a stale concurrent run (which loaded the same slice) does not move it twice; and never
    waiting on a run's lock (a sensor passing a clean slice skips instead)."""
    start = sweep.start or (None, None)
    end = sweep.end or (None, None)
    moved = conn.execute(
        sa.text("""
        UPDATE processing_markers SET sweep_marker = :end_marker, sweep_source_id = :end_id
        WHERE marker_id = (
            SELECT marker_id FROM processing_markers WHERE marker_type = :marker_type
              AND sweep_marker IS NOT DISTINCT FROM CAST(:start_marker AS bigint)
              AND sweep_source_id IS NOT DISTINCT FROM CAST(:start_id AS bigint)
            FOR UPDATE SKIP LOCKED)
    """),
        {
            "marker_type": MARKER_TYPES[source_type],
            "start_marker": start[0],
            "start_id": start[1],
            "end_marker": end[0],
            "end_id": end[1],
        },
    ).rowcount
    return bool(moved)


def advance_to(plan: UpdatePlan) -> int:
    """The highest marker among the window's own rows, capped at the window end."""
    processed = plan.processed
    seen = processed.loc[processed["kind"] == "window", "marker"].dropna()
    if seen.empty:
        return plan.window.from_marker
    return min(plan.window.to_marker, int(seen.max()))


def write_plan(
    jobmanager: sa.Engine, logs: sa.Engine, plan: UpdatePlan, run_id: str
) -> WriteReport:
    """R18: logs commit first, then one jobmanager transaction; the marker lock spans both."""
    transient_point("write")
    with jobmanager.connect() as jm, jm.begin():
        marker_before = lock_marker(jm, plan.window.source_type)
        with logs.begin() as lg:
            report, logs_failures = write_logs(lg, plan)
        crash_point("after_logs_commit")
        report.marker_before = marker_before
        write_jobmanager(jm, plan, logs_failures, run_id, report)
        crash_point("before_jobmanager_commit")
    crash_point("after_jobmanager_commit")
    return report
