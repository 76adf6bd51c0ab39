"""The two yardsticks of the throughput benchmark. Bench only: the product never imports this.

- ``reference_print`` / ``reference_scans``: the original plan's loop, row at a time. Per source
  row, look up its imposition's (or runlist's) files and jobs, then issue one UPDATE/INSERT per
  affected row, one transaction per row (logs, then jobmanager). Deliberately generous: no
  precedence guard beyond what the plan reads, no notes beyond a count.
- ``capture_changes`` / ``apply_changes``: the write limit. The final row changes the product
  made, taken from its databases, then applied to an unprocessed copy of the same shop with one
  COPY into a temp table and one UPDATE/INSERT … FROM per target table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from jobstatus_dagster.core.identifiers import FILE_JOB_SQL, parse_file_id
from jobstatus_dagster.core.scans import JOB_CODE, normalise_operation, parse_operations

# ----- the write limit ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A table the product writes, with the columns it writes and how a row is identified."""

    database: str  # "jobmanager" | "logs"
    table: str
    key: tuple[str, ...]
    columns: tuple[str, ...]  # written columns, key excluded
    existing_rows: bool  # the shop's rows: UPDATE … FROM; ours: INSERT … ON CONFLICT

    def select(self) -> str:
        return f"SELECT {', '.join((*self.key, *self.columns))} FROM {self.table}"


_TRACKING = ("completed_at", "completed_by", "source_id", "status", "notes")
TARGETS = (
    Target("logs", "imposition_operations", ("imposition_operation_id",), _TRACKING, True),
    Target("logs", "job_operations", ("job_operation_id",), _TRACKING, True),
    Target(
        "jobmanager",
        "job_operation_state",
        ("job_id", "operation"),
        ("value", "status", "version_tag", "precedence", "state_based", "event_time")
        + ("source_type", "source_id", "notes"),
        False,
    ),
    Target("jobmanager", "jobs", ("job_id",), ("operations",), True),
    Target(
        "jobmanager",
        "job_status_updates",
        ("source_type", "source_id", "job_id", "version_tag", "operation"),
        ("status", "printed_count", "aborted_count", "total_count", "applied", "notes")
        + ("event_time", "run_id"),
        False,
    ),
    Target(
        "jobmanager",
        "processing_failures",
        ("source_type", "source_id", "reason", "subject"),
        ("detail", "retryable", "attempts", "resolved_at", "run_id"),
        False,
    ),
    Target(
        "jobmanager",
        "processed_source_rows",
        ("source_type", "source_id"),
        ("marker", "run_id"),
        False,
    ),
    Target("jobmanager", "processing_markers", ("marker_type",), ("last_processed_id",), True),
)

Snapshot = dict[str, set[bytes]]


def snapshot(jobmanager_url: str, logs_url: str) -> Snapshot:
    """Every target table's written columns, one COPY text line per row."""
    out: Snapshot = {}
    for url, name in ((jobmanager_url, "jobmanager"), (logs_url, "logs")):
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            for target in TARGETS:
                if target.database != name:
                    continue
                data = bytearray()
                with cur.copy(f"COPY ({target.select()}) TO STDOUT") as copy:
                    for block in copy:
                        data += block
                out[target.table] = set(bytes(data).splitlines())
    return out


def changes(before: Snapshot, after: Snapshot) -> dict[str, bytes]:
    """Rows (as COPY text) that are new or different after: the final row changes."""
    return {
        table: b"".join(line + b"\n" for line in sorted(after[table] - before[table]))
        for table in after
    }


def apply_changes(
    jobmanager_url: str, logs_url: str, rows: dict[str, bytes]
) -> tuple[float, dict[str, int]]:
    """COPY into temp tables and one UPDATE/INSERT … FROM per table, one transaction per
    database (logs first, as the product). Returns seconds and rows changed per table."""
    changed: dict[str, int] = {}
    started = time.perf_counter()
    for url, name in ((logs_url, "logs"), (jobmanager_url, "jobmanager")):
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            for target in TARGETS:
                if target.database != name or not rows.get(target.table):
                    continue
                temp = f"tmp_{target.table}"
                cols = (*target.key, *target.columns)
                cur.execute(
                    f"CREATE TEMP TABLE {temp} ON COMMIT DROP AS"
                    f" SELECT {', '.join(cols)} FROM {target.table} LIMIT 0"
                )
                with cur.copy(f"COPY {temp} ({', '.join(cols)}) FROM STDIN") as copy:
                    copy.write(rows[target.table])
                if target.existing_rows:
                    sets = ", ".join(f"{c} = t.{c}" for c in target.columns)
                    match = " AND ".join(f"o.{k} = t.{k}" for k in target.key)
                    cur.execute(f"UPDATE {target.table} o SET {sets} FROM {temp} t WHERE {match}")
                else:
                    sets = ", ".join(f"{c} = excluded.{c}" for c in target.columns)
                    cur.execute(
                        f"INSERT INTO {target.table} ({', '.join(cols)})"
                        f" SELECT {', '.join(cols)} FROM {temp}"
                        f" ON CONFLICT ({', '.join(target.key)}) DO UPDATE SET {sets}"
                    )
                changed[target.table] = cur.rowcount
            conn.commit()
    return time.perf_counter() - started, changed


# ----- the row-at-a-time reference ---------------------------------------------------------

_FILES_OF_IMPOSITION = "SELECT file_id FROM imposition_file_mapping WHERE imposition_id = %s"
_FILES_OF_JOB = (
    f"SELECT imposition_id, file_id FROM imposition_file_mapping WHERE {FILE_JOB_SQL} = %s"
)
_HISTORY = 'SELECT name, upper(status) FROM "print OS" WHERE name = ANY(%s) AND marker <= %s'
_UPDATE_IMPOSITION_OP = """UPDATE imposition_operations SET completed_at = %s, completed_by = %s,
    source_id = %s, status = %s, notes = %s WHERE imposition_id = %s AND operation_id = %s"""
_UPDATE_JOB_OP = """UPDATE job_operations SET completed_at = %s, completed_by = %s,
    source_id = %s, status = %s, notes = %s
    WHERE job_id = %s AND version_tag = %s AND operation_id = %s"""
_UPSERT_STATE = """INSERT INTO job_operation_state (job_id, operation, value, status, version_tag,
    precedence, event_time, source_type, source_id, notes)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (job_id, operation) DO UPDATE SET value = excluded.value, status = excluded.status,
    version_tag = excluded.version_tag, event_time = excluded.event_time,
    source_type = excluded.source_type, source_id = excluded.source_id, notes = excluded.notes"""
_UPDATE_JOB = """UPDATE jobs SET operations = COALESCE(operations, '{}'::jsonb)
    || jsonb_build_object(%s::text, %s::boolean) WHERE job_id = %s"""
_INSERT_AUDIT = """INSERT INTO job_status_updates (source_type, source_id, job_id, version_tag,
    operation, status, printed_count, aborted_count, total_count, notes, event_time)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT ON CONSTRAINT job_status_updates_source_key DO NOTHING"""
_INSERT_FAILURE = """INSERT INTO processing_failures (source_type, source_id, reason, subject)
    VALUES (%s, %s, %s, %s) ON CONFLICT ON CONSTRAINT processing_failures_key DO NOTHING"""
_MARK_PROCESSED = """INSERT INTO processed_source_rows (source_type, source_id, marker)
    VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"""
_ADVANCE = "UPDATE processing_markers SET last_processed_id = %s WHERE marker_type = %s"
_OP_IDS = {"print": "op001", "coating": "op003", "kiss_cut": "op006"}


def reference_print(jobmanager_url: str, logs_url: str, limit: int) -> tuple[int, float]:
    """The first ``limit`` print events, one at a time; returns (events, seconds)."""
    return _one_at_a_time(
        jobmanager_url,
        logs_url,
        'SELECT id, name, upper(status), marker, job_complete_time FROM "print OS"'
        " ORDER BY marker, id LIMIT %s",
        limit,
        _print_event,
    )


def _one_at_a_time(
    jobmanager_url: str, logs_url: str, query: str, limit: int, handle: Callable[..., None]
) -> tuple[int, float]:
    """``handle(jm, lg, *row)`` for each source row of ``query``, timed without the read."""
    with psycopg.connect(jobmanager_url) as jm_read:
        rows = jm_read.execute(query, (limit,)).fetchall()
    started = time.perf_counter()
    with psycopg.connect(jobmanager_url) as jm, psycopg.connect(logs_url) as lg:
        for row in rows:
            handle(jm, lg, *row)
    return len(rows), time.perf_counter() - started


def _print_event(jm, lg, source_id, name, status, marker, at) -> None:
    def fail(reason: str, subject: str) -> None:
        jm.execute(_INSERT_FAILURE, ("print_os", source_id, reason, subject))

    if name is None or status not in ("PRINTED", "ABORTED"):
        fail("bad_event", str(name))
    else:
        versions: dict[tuple[str, str], None] = {}
        for (file_id,) in lg.execute(_FILES_OF_IMPOSITION, (name,)).fetchall():
            parsed = parse_file_id(file_id)
            if parsed is None:
                fail("bad_file_id", file_id)
            else:
                versions[parsed] = None
        if not versions:
            fail("unmapped_imposition", name)
        files: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
        for job_id in dict.fromkeys(job for job, _ in versions):
            for imposition_id, file_id in lg.execute(_FILES_OF_JOB, (job_id,)).fetchall():
                parsed = parse_file_id(file_id)
                if parsed in versions:
                    files[parsed].add((imposition_id, file_id))
        impositions = list({i for held in files.values() for i, _ in held})
        events = defaultdict(set)
        for imposition_id, event_status in jm.execute(_HISTORY, (impositions, marker)).fetchall():
            events[imposition_id].add(event_status)
        imp_status = "completed" if status == "PRINTED" else "aborted"
        lg.execute(
            _UPDATE_IMPOSITION_OP,
            (at, "print_os", source_id, imp_status, None, name, "op001"),
        )
        results = {}
        for (job_id, version), held in files.items():
            by_file = defaultdict(set)
            for imposition_id, file_id in held:
                by_file[file_id] |= events[imposition_id]
            total = len(by_file)
            printed = sum("PRINTED" in s for s in by_file.values())
            aborted = sum("ABORTED" in s and "PRINTED" not in s for s in by_file.values())
            state = (
                "completed"
                if printed == total
                else "partial"
                if printed
                else "aborted"
                if aborted
                else None
            )
            note = f"{printed} of {total} files printed, {aborted} aborted"
            results[job_id, version] = (state, printed, aborted, total, note)
            lg.execute(
                _UPDATE_JOB_OP,
                (at, "print_os", source_id, state, note, job_id, version, "op001"),
            )
        lg.commit()
        for (job_id, version), (state, printed, aborted, total, note) in results.items():
            done = state == "completed"
            jm.execute(
                _UPSERT_STATE,
                (job_id, "print", done, state, version, 1, at, "print_os", source_id, note),
            )
            jm.execute(_UPDATE_JOB, ("print", done, job_id))
            jm.execute(
                _INSERT_AUDIT,
                ("print_os", source_id, job_id, version, "print", state)
                + (printed, aborted, total, note, at),
            )
    jm.execute(_MARK_PROCESSED, ("print_os", source_id, marker))
    jm.execute(_ADVANCE, (marker, "print_os"))
    jm.commit()


def reference_scans(jobmanager_url: str, logs_url: str, limit: int) -> tuple[int, float]:
    """The first ``limit`` scans, one at a time (the reference loop); returns (scans, seconds)."""
    return _one_at_a_time(
        jobmanager_url,
        logs_url,
        "SELECT scan_id, code_text, operations::text, scanned_at FROM scanned_codes"
        " ORDER BY scan_id LIMIT %s",
        limit,
        lambda jm, lg, scan_id, code, operations, at: _scan(
            jm, lg, scan_id, (code or "").strip(), operations, at
        ),
    )


def _scan(jm, lg, scan_id, code, operations, at) -> None:
    def fail(reason: str, subject: str) -> None:
        jm.execute(_INSERT_FAILURE, ("scanner", scan_id, reason, subject))

    names = []
    parsed_ops = parse_operations(operations)
    for raw in parsed_ops.names:
        name = normalise_operation(raw)
        (names if name in _OP_IDS or name in ("backscore", "slitter") else []).append(name)
    impositions = [
        i
        for (i,) in lg.execute(
            "SELECT imposition_id FROM production_planner_paths WHERE runlist_id = %s", (code,)
        ).fetchall()
    ]
    versions: dict[tuple[str, str], None] = {}
    if not impositions:
        match = JOB_CODE.match(code)
        if match is None:
            fail("unrecognised_code", code)
        else:
            job, version = match["job_id"], match["version_tag"]
            held = [
                i
                for i, f in lg.execute(_FILES_OF_JOB, (job,)).fetchall()
                if parse_file_id(f) == (job, version)
            ]
            runlist = lg.execute(
                "SELECT max(runlist_id) FROM production_planner_paths WHERE imposition_id = ANY(%s)",
                (held,),
            ).fetchone()[0]
            if runlist is None:
                versions[job, version] = None
            else:
                impositions = [
                    i
                    for (i,) in lg.execute(
                        "SELECT imposition_id FROM production_planner_paths WHERE runlist_id = %s",
                        (runlist,),
                    ).fetchall()
                ]
    for imposition_id in impositions:
        for (file_id,) in lg.execute(_FILES_OF_IMPOSITION, (imposition_id,)).fetchall():
            parsed = parse_file_id(file_id)
            if parsed is not None:
                versions[parsed] = None
    for name in names:
        op_id = _OP_IDS.get(name)
        if op_id is None:
            continue
        for imposition_id in impositions:
            lg.execute(
                _UPDATE_IMPOSITION_OP,
                (at, "scanner", scan_id, "completed", None, imposition_id, op_id),
            )
        for job_id, version in versions:
            lg.execute(
                _UPDATE_JOB_OP,
                (at, "scanner", scan_id, "completed", None, job_id, version, op_id),
            )
    lg.commit()
    for name in names:
        for job_id, version in versions:
            jm.execute(
                _UPSERT_STATE,
                (job_id, name, True, "completed", version, 1, at, "scanner", scan_id, None),
            )
            jm.execute(_UPDATE_JOB, (name, True, job_id))
            jm.execute(
                _INSERT_AUDIT,
                ("scanner", scan_id, job_id, version, name, "completed")
                + (None, None, None, None, at),
            )
    jm.execute(_MARK_PROCESSED, ("scanner", scan_id, scan_id))
    jm.execute(_ADVANCE, (scan_id, "scanned_codes"))
    jm.commit()
