"""Applying an UpdatePlan: logs first, then one jobmanager transaction (R18).

Under one lock for every writer (R19, R24) the write gathers the whole evidence of every key
the plan touches, now or before (its rows' previous attributions), projects the targets from it
(core.projection) and writes them: values that no evidence supports any more are withdrawn to
what the row held before jobstatus first wrote it (R22b). A plan made before another writer
committed is made again under the lock (R24). Every statement is set-based over a temp table
filled by COPY, and every write is keyed by its source, so re-running repairs a crash (R18).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlalchemy as sa
from psycopg import sql

from jobstatus_dagster.core.identifiers import short_subjects
from jobstatus_dagster.core.plan import (
    ATTRIBUTION_COLUMNS,
    FAILURE_COLUMNS,
    GONE,
    IMPOSITION_ATTRIBUTION_COLUMNS,
    PRINT,
    PRINT_STATE_COLUMNS,
    SCANNER,
    Sweep,
    UpdatePlan,
    empty,
    failure_rows,
)
from jobstatus_dagster.core.projection import (
    VERSION_STATE_COLUMNS,
    Projection,
    minus,
    project,
    version_state,
)
from jobstatus_dagster.faults import crash_point, transient_point
from jobstatus_dagster.io.compose import (
    Identifier,
    composed,
    expression,
    joined,
    row_key,
    trimmed,
)
from jobstatus_dagster.io.sources import (
    load_operation_codes,
    load_versions_of_jobs,
    read_generation,
)
from jobstatus_dagster.source import source_named

# One lock for every writer of the targets, whatever the source: both sources write
# job_operations, jobs.operations and the audit (R19, R24). Held to the jobmanager commit.
WRITER_LOCK = 7_316_052_209

_TEMP_TABLES = {
    "tmp_attributions": """source_type text, source_id bigint, marker bigint, job_id text,
        version_tag text, operation text, status text, printed_count int, aborted_count int,
        total_count int, evidence_notes text, event_time timestamp, own boolean,
        applied boolean, notes text""",
    "tmp_imposition_attributions": """source_type text, source_id bigint, marker bigint,
        imposition_id text, operation text, status text, event_time timestamp,
        evidence_notes text""",
    "tmp_withdrawn": "source_id bigint, job_id text, version_tag text, operation text",
    "tmp_imposition_withdrawn": "source_id bigint, imposition_id text, operation text",
    "tmp_verdicts": """source_type text, source_id bigint, job_id text, version_tag text,
        operation text, applied boolean, notes text""",
    "tmp_print_state": """job_id text, version_tag text, status text, printed_count int,
        aborted_count int, total_count int, highest boolean, notes text,
        event_time timestamp, source_id bigint""",
    "tmp_print_jobs": "job_id text",
    "tmp_job_state": """job_id text, operation text, value boolean, version_tag text,
        precedence int, status text, event_time timestamp, source_type text, source_id bigint,
        notes text""",
    "tmp_job_state_withdrawn": "job_id text, operation text",
    "tmp_imposition_ops": """imposition_id text, operation text, operation_id text, status text,
        event_time timestamp, source_type text, source_id bigint, notes text""",
    "tmp_job_ops": """job_id text, version_tag text, operation text, operation_id text,
        status text, event_time timestamp, source_type text, source_id bigint, notes text""",
    "tmp_imposition_ops_withdrawn": "imposition_id text, operation text, operation_id text",
    "tmp_imposition_ops_touched": "imposition_id text, operation text",
    "tmp_job_ops_touched": "job_id text, version_tag text, operation text",
    "tmp_job_ops_withdrawn": "job_id text, version_tag text, operation text, operation_id text",
    "tmp_failures": "source_type text, source_id bigint, reason text, subject text, detail text, retryable boolean",
    "tmp_processed": "source_id bigint, marker bigint, kind text",
    "tmp_reprojected": "subject text",
    "tmp_version_state": """job_id text, version_tag text, operation text, status text,
        printed_count int, aborted_count int, total_count int, notes text,
        event_time timestamp, source_type text, source_id bigint""",
    "tmp_version_withdrawn": "job_id text, version_tag text, operation text",
}


@dataclass
class WriteReport:
    """What one write changed; becomes run metadata."""

    marker_before: int = 0
    marker_after: int = 0
    replanned: int = 0
    imposition_rows_updated: int = 0
    job_operation_rows_updated: int = 0
    rows_withdrawn: int = 0
    job_states_changed: int = 0
    changes_published: int = 0
    jobs_updated: int = 0
    audit_rows_written: int = 0
    attributions_withdrawn: int = 0
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
    name = Identifier(table)
    conn.execute(
        composed(
            "CREATE TEMP TABLE {name} ({columns}) ON COMMIT DROP",
            name=name,
            columns=expression(_TEMP_TABLES[table]),
        )
    )
    if frame.empty:
        return
    raw = conn.connection.driver_connection
    with raw.cursor() as cur:
        copy_sql = sql.SQL("COPY {name} ({columns}) FROM STDIN").format(
            name=name, columns=joined(", ", [Identifier(c) for c in columns])
        )
        with cur.copy(copy_sql) as copy:
            copy.write(copy_text(frame, columns))
        if analyze:
            cur.execute(sql.SQL("ANALYZE {name}").format(name=name))


def _read(conn: sa.Connection, sql: str, **params: object) -> pd.DataFrame:
    return pd.read_sql(sa.text(sql), conn, params=params)


@dataclass
class Evidence:
    """The current attributions of the plan's rows and the whole evidence of the keys touched."""

    own: pd.DataFrame  # the plan's attributions of its own rows
    withdrawn: pd.DataFrame  # previous attributions of its rows that it no longer makes
    imposition_withdrawn: pd.DataFrame
    touched_versions: pd.DataFrame  # job_id, version_tag, operation
    touched_impositions: pd.DataFrame  # imposition_id, operation
    scanner: pd.DataFrame  # scanner attributions of every touched (job, operation)
    impositions: pd.DataFrame  # attributions of every touched (imposition, operation)
    print_state: pd.DataFrame  # PrintOS print state of every version of the touched jobs
    versions: pd.DataFrame  # (job_id, version_tag) with files, of every touched print job (R12)


_VERSION_KEY = ["job_id", "version_tag", "operation"]
_ATTRIBUTION_KEY = ["source_id", *_VERSION_KEY]
_IMPOSITION_KEY = ["source_id", "imposition_id", "operation"]


def gather_evidence(conn: sa.Connection, plan: UpdatePlan, logs: sa.Engine) -> Evidence:
    """A fixed number of indexed reads, each bounded by the keys touched, not the history."""
    source_type = plan.window.source_type
    ids = plan.processed["source_id"].astype("int64").tolist()
    attributions = plan.attributions
    own = attributions[attributions["own"].astype(bool)].reset_index(drop=True)
    before = _read(
        conn,
        "SELECT source_id, job_id, version_tag, operation FROM job_status_updates"
        " WHERE source_type = :t AND source_id = ANY(:ids) AND withdrawn_at IS NULL",
        t=source_type,
        ids=ids,
    )
    imposition_before = _read(
        conn,
        "SELECT source_id, imposition_id, operation FROM imposition_status_updates"
        " WHERE source_type = :t AND source_id = ANY(:ids) AND withdrawn_at IS NULL",
        t=source_type,
        ids=ids,
    )
    withdrawn = minus(before, own, _ATTRIBUTION_KEY)
    imposition_withdrawn = minus(imposition_before, plan.imposition_attributions, _IMPOSITION_KEY)

    old_print = _read(
        conn,
        "SELECT job_id, version_tag FROM job_print_state WHERE job_id = ANY(:jobs)",
        jobs=list(plan.print_jobs),
    )
    touched_versions = (
        pd.concat(
            [
                attributions[_VERSION_KEY],
                before[_VERSION_KEY],
                plan.print_state[["job_id", "version_tag"]].assign(operation=PRINT),
                old_print.assign(operation=PRINT),
            ],
            ignore_index=True,
        )
        .drop_duplicates()
        .reset_index(drop=True)
    )
    touched_impositions = (
        pd.concat(
            [
                plan.imposition_attributions[["imposition_id", "operation"]],
                imposition_before[["imposition_id", "operation"]],
            ],
            ignore_index=True,
        )
        .drop_duplicates()
        .reset_index(drop=True)
    )

    job_ops = touched_versions[["job_id", "operation"]].drop_duplicates()
    scanner = _read(
        conn,
        "SELECT u.source_type, u.source_id, u.marker, u.job_id, u.version_tag, u.operation,"
        " u.status, u.evidence_notes, u.event_time FROM job_status_updates u"
        " JOIN unnest(CAST(:jobs AS text[]), CAST(:ops AS text[])) k(job_id, operation)"
        "   ON u.job_id = k.job_id AND u.operation = k.operation"
        " WHERE u.source_type = :scanner AND u.withdrawn_at IS NULL",
        jobs=job_ops["job_id"].tolist(),
        ops=job_ops["operation"].tolist(),
        scanner=SCANNER,
    )
    if source_type == SCANNER:
        scanner = scanner[~scanner["source_id"].isin(ids)]
        scanner = pd.concat([scanner, own[scanner.columns]], ignore_index=True)
    impositions = _read(
        conn,
        "SELECT u.source_type, u.source_id, u.marker, u.imposition_id, u.operation, u.status,"
        " u.event_time, u.evidence_notes FROM imposition_status_updates u"
        " JOIN unnest(CAST(:imps AS text[]), CAST(:ops AS text[])) k(imposition_id, operation)"
        "   ON u.imposition_id = k.imposition_id AND u.operation = k.operation"
        " WHERE u.withdrawn_at IS NULL",
        imps=touched_impositions["imposition_id"].tolist(),
        ops=touched_impositions["operation"].tolist(),
    )
    impositions = impositions[
        ~((impositions["source_type"] == source_type) & impositions["source_id"].isin(ids))
    ]
    impositions = pd.concat(
        [impositions, plan.imposition_attributions[IMPOSITION_ATTRIBUTION_COLUMNS]],
        ignore_index=True,
    )
    print_jobs = touched_versions.loc[touched_versions["operation"] == PRINT, "job_id"].unique()
    print_state = _read(
        conn,
        "SELECT job_id, version_tag, status, printed_count, aborted_count, total_count, highest,"
        " notes, event_time, source_id FROM job_print_state WHERE job_id = ANY(:jobs)",
        jobs=list(print_jobs),
    )
    print_state = pd.concat(
        [print_state[~print_state["job_id"].isin(plan.print_jobs)], plan.print_state],
        ignore_index=True,
    )[PRINT_STATE_COLUMNS]
    for frame in (scanner, impositions, print_state):
        frame["event_time"] = pd.to_datetime(frame["event_time"]).astype("datetime64[us]")
    # R12: the job's versions are those with files; the plan's own print state holds them for
    # its jobs, the mapping for the others (a job only scanned so far).
    unplanned = sorted(set(print_jobs) - set(plan.print_jobs))
    mapped = print_state[["job_id", "version_tag"]].iloc[0:0]
    if unplanned:  # no logs connection on the hot path when the plan holds every version
        with logs.connect() as lg:
            mapped = load_versions_of_jobs(lg, unplanned, plan.customer)
    versions = pd.concat(
        [print_state[["job_id", "version_tag"]], mapped], ignore_index=True
    ).drop_duplicates()
    return Evidence(
        own=own,
        withdrawn=withdrawn,
        imposition_withdrawn=imposition_withdrawn,
        touched_versions=touched_versions,
        touched_impositions=touched_impositions,
        scanner=scanner.reset_index(drop=True),
        impositions=impositions.reset_index(drop=True),
        print_state=print_state,
        versions=versions.reset_index(drop=True),
    )


def _with_operation_ids(
    frame: pd.DataFrame, codes: pd.DataFrame, keys: Sequence[str] = ()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """R8: attach operation_id; a value whose operation has no code yet is a retryable failure
    of the key's winner, its subject the key (withdrawn keys carry no source, so they yield
    none)."""
    merged = frame.merge(codes, on="operation", how="left")
    unmapped = merged[merged["operation_id"].isna()]
    if "source_id" not in frame or unmapped.empty:
        return merged[merged["operation_id"].notna()].reset_index(drop=True), empty(FAILURE_COLUMNS)
    failures = failure_rows(
        unmapped,
        "",
        "unmapped_operation",
        key_subjects(unmapped, keys),
        "operation "
        + unmapped["operation"].astype("string")
        + " has no operation_id in operation_codes",
    ).assign(source_type=unmapped["source_type"].to_numpy())
    return merged[merged["operation_id"].notna()].reset_index(drop=True), failures


def key_subjects(frame: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """The subject of a failure about a target key: its identifiers and operation joined by
    '/', as the missing-row failures name it (R20)."""
    parts = [frame[k].astype("string") for k in [*keys, "operation"]]
    subject = parts[0]
    for part in parts[1:]:
        subject = subject + "/" + part
    return subject


def _one_per_row(values: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = [*keys, "operation_id", "event_time", "source_id", "operation"]
    ordered = values.sort_values(order, kind="stable")
    return ordered.drop_duplicates([*keys, "operation_id"], keep="last").reset_index(drop=True)


_TARGET_SET = """completed_at = t.event_time, completed_by = t.source_type,
               source_id = t.source_id, status = t.status, notes = t.notes"""


def _target_differs(p: str, time: str, by: str) -> sql.Composed:
    """The target row differs from the values of ``p`` (so a re-run writes nothing)."""
    return sql.SQL(
        """(o.completed_at, o.completed_by, o.source_id, o.status, o.notes)
              IS DISTINCT FROM ({time}, {by}, {source_id}, {status}, {notes})"""
    ).format(
        time=Identifier(p, time),
        by=Identifier(p, by),
        source_id=Identifier(p, "source_id"),
        status=Identifier(p, "status"),
        notes=Identifier(p, "notes"),
    )


def _reached_rows(names: dict[str, sql.Composable]) -> sql.Composed:
    """The target rows a write may change (its values', its withdrawn keys', its touched keys'),
    with their id as text and what they hold, as a subquery."""
    held = sql.SQL(
        "SELECT CAST({row_id} AS text) AS row_id, o.completed_at, o.completed_by, o.source_id,"
        " o.status, o.notes FROM {target} o"
    ).format(**names)
    return sql.SQL(
        "({held} JOIN {values} t ON {match} UNION {held} JOIN {withdrawn} t ON {match}"
        " UNION {held} JOIN {touched} k ON {touched_match})"
    ).format(held=held, **names)


def _key_match(alias: str, keys: list[str]) -> sql.Composed:
    """A *_operations row ``o`` whose trimmed key (R4) is the key of ``alias``'s row: the whole
    key as one value, probed through the hash index of logs migration 0013 (R1: any length),
    then column by column, so a separator inside an identifier never matches a wrong row."""
    whole = sql.SQL("{} = {}").format(
        row_key([Identifier("o", k) for k in keys]),
        row_key([Identifier(alias, k) for k in keys], trim=False),
    )
    columns = [
        sql.SQL("{} = {}").format(trimmed(Identifier("o", k)), Identifier(alias, k)) for k in keys
    ]
    return joined(" AND ", [whole, *columns])


def _project_logs_table(
    conn: sa.Connection,
    table: str,
    row_id: str,
    keys: Sequence[str],
    values: pd.DataFrame,
    withdrawn: pd.DataFrame,
    touched: pd.DataFrame,
) -> tuple[int, int, pd.DataFrame]:
    """One *_operations table: the projected values, and back to their originals the rows of
    withdrawn keys and the rows a touched operation name wrote that no value reaches now (its
    code was changed, R8, R22b)."""
    short = "imposition_ops" if table == "imposition_operations" else "job_ops"
    columns = [
        *keys,
        "operation",
        "operation_id",
        "status",
        "event_time",
        "source_type",
        "source_id",
        "notes",
    ]
    # Not analysed: then the planner probes the trimmed key index per temp row; with statistics
    # it hashes the whole table for a window of thousands of rows (a cost growing with the shop).
    _copy_into(conn, f"tmp_{short}", values, columns)
    _copy_into(conn, f"tmp_{short}_withdrawn", withdrawn, [*keys, "operation", "operation_id"])
    _copy_into(conn, f"tmp_{short}_touched", touched, [*keys, "operation"])
    names = {
        "target": Identifier(table),
        "row_id": Identifier("o", row_id),
        "values": Identifier(f"tmp_{short}"),
        "withdrawn": Identifier(f"tmp_{short}_withdrawn"),
        "touched": Identifier(f"tmp_{short}_touched"),
        # R4: the shop's identifiers compare trimmed; R1: the whole key through its hash index.
        "match": _key_match("t", [*keys, "operation_id"]),
        "touched_match": _key_match("k", keys),
        "key_list": joined(", ", [Identifier("t", k) for k in keys]),
        "target_set": expression(_TARGET_SET),
        "original_differs": _target_differs("g", "completed_at", "completed_by"),
        "value_differs": _target_differs("t", "event_time", "source_type"),
    }
    names["reached"] = _reached_rows(names)
    params = {"table_name": table}
    # R22b: a row that no longer holds what jobstatus last left in it was written by the shop
    # (over ours, or deleted and added again): its value now is its new original.
    conn.execute(
        composed(
            """
        DELETE FROM operation_row_originals g USING {reached} r
        WHERE g.table_name = :table_name AND g.row_id = r.row_id AND g.written_known
          AND (r.completed_at, r.completed_by, r.source_id, r.status, r.notes)
              IS DISTINCT FROM (g.written_completed_at, g.written_completed_by,
                                g.written_source_id, g.written_status, g.written_notes)
    """,
            **names,
        ),
        params,
    )
    # R22b: what the row held before jobstatus first wrote it, kept once.
    conn.execute(
        composed(
            """
        INSERT INTO operation_row_originals (table_name, row_id, completed_at, completed_by,
            source_id, status, notes, written_completed_at, written_completed_by,
            written_source_id, written_status, written_notes, written_known)
        SELECT DISTINCT ON ({row_id}) CAST(:table_name AS text), {row_id}, o.completed_at,
               o.completed_by, o.source_id, o.status, o.notes, o.completed_at,
               o.completed_by, o.source_id, o.status, o.notes, true
        FROM {target} o JOIN {values} t ON {match}
        ON CONFLICT (table_name, row_id) DO NOTHING
    """,
            **names,
        ),
        params,
    )
    conn.execute(
        composed(
            """
        UPDATE operation_row_originals g SET operation = t.operation
        FROM {target} o JOIN {values} t ON {match}
        WHERE g.table_name = :table_name AND g.row_id = {row_id}
          AND g.operation IS DISTINCT FROM t.operation
    """,
            **names,
        ),
        params,
    )
    stale = conn.execute(
        composed(
            """
        UPDATE {target} o SET completed_at = g.completed_at, completed_by = g.completed_by,
               source_id = g.source_id, status = g.status, notes = g.notes
        FROM {touched} k
        JOIN operation_row_originals g ON g.table_name = :table_name AND g.operation = k.operation
        WHERE {touched_match} AND g.row_id = {row_id}
          AND NOT EXISTS (SELECT 1 FROM {values} t WHERE {match})
          AND {original_differs}
    """,
            **names,
        ),
        params,
    ).rowcount
    updated = conn.execute(
        composed(
            """
        UPDATE {target} o SET {target_set}
        FROM {values} t
        WHERE {match} AND {value_differs}
    """,
            **names,
        )
    ).rowcount
    restored = conn.execute(
        composed(
            """
        UPDATE {target} o SET completed_at = g.completed_at, completed_by = g.completed_by,
               source_id = g.source_id, status = g.status, notes = g.notes
        FROM {withdrawn} t
        JOIN operation_row_originals g ON g.table_name = :table_name
        WHERE {match} AND g.row_id = {row_id}
          AND {original_differs}
    """,
            **names,
        ),
        params,
    ).rowcount
    # R22b: what each reached row holds now that jobstatus wrote it, to see the shop's later
    # writes over it.
    conn.execute(
        composed(
            """
        UPDATE operation_row_originals g SET written_completed_at = r.completed_at,
               written_completed_by = r.completed_by, written_source_id = r.source_id,
               written_status = r.status, written_notes = r.notes, written_known = true
        FROM {reached} r
        WHERE g.table_name = :table_name AND g.row_id = r.row_id
          AND (NOT g.written_known
               OR (r.completed_at, r.completed_by, r.source_id, r.status, r.notes)
                  IS DISTINCT FROM (g.written_completed_at, g.written_completed_by,
                                    g.written_source_id, g.written_status, g.written_notes))
    """,
            **names,
        ),
        params,
    )
    missing = pd.read_sql(
        composed(
            """
        SELECT t.source_type, t.source_id, concat_ws('/', {key_list}, t.operation) AS subject
        FROM {values} t WHERE NOT EXISTS (SELECT 1 FROM {target} o WHERE {match})
    """,
            **names,
        ),
        conn,
    )
    failures = failure_rows(
        missing,
        "",
        "missing_operation_row",
        missing["subject"],
        "no "
        + table
        + " row for "
        + missing["subject"].astype("string")
        + "; not created by jobstatus",
    )
    failures["source_type"] = missing["source_type"].to_numpy()
    return int(updated), int(restored) + int(stale), failures


def write_logs(
    conn: sa.Connection,
    projection: Projection,
    touched_versions: pd.DataFrame,
    touched_impositions: pd.DataFrame,
) -> tuple[WriteReport, pd.DataFrame]:
    """imposition_operations and job_operations (logs); returns the failures found on the way."""
    report = WriteReport()
    codes = load_operation_codes(conn).dropna(subset=["operation_id"])
    imposition_ops, unmapped_a = _with_operation_ids(
        projection.imposition_ops, codes, ["imposition_id"]
    )
    job_ops, unmapped_b = _with_operation_ids(projection.job_ops, codes, ["job_id", "version_tag"])
    # Two names the shop mapped to one code write one row: the later event wins it (R15).
    imposition_ops = _one_per_row(imposition_ops, ["imposition_id"])
    job_ops = _one_per_row(job_ops, ["job_id", "version_tag"])
    imposition_gone, _ = _with_operation_ids(projection.imposition_ops_withdrawn, codes)
    job_gone, _ = _with_operation_ids(projection.job_ops_withdrawn, codes)
    updated_a, restored_a, missing_a = _project_logs_table(
        conn,
        "imposition_operations",
        "imposition_operation_id",
        ["imposition_id"],
        imposition_ops,
        imposition_gone,
        touched_impositions,
    )
    updated_b, restored_b, missing_b = _project_logs_table(
        conn,
        "job_operations",
        "job_operation_id",
        ["job_id", "version_tag"],
        job_ops,
        job_gone,
        touched_versions,
    )
    report.imposition_rows_updated = updated_a + restored_a
    report.job_operation_rows_updated = updated_b + restored_b
    report.rows_withdrawn = restored_a + restored_b
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
        {"t": source_named(source_type).marker_type},
    ).scalar_one_or_none()
    if value is None:
        conn.execute(
            sa.text(
                "INSERT INTO processing_markers (marker_type, last_processed_id) VALUES (:t, 0)"
                " ON CONFLICT (marker_type) DO NOTHING"
            ),
            {"t": source_named(source_type).marker_type},
        )
        return lock_marker(conn, source_type)
    return int(value)


def _audit_rows(evidence: Evidence, projection: Projection) -> pd.DataFrame:
    """The plan's own attributions with their verdict (R23): PrintOS print rows recompute the
    state from the whole history and always apply; scans take the projection's verdict."""
    own = evidence.own.merge(projection.verdicts, on=["source_type", *_ATTRIBUTION_KEY], how="left")
    printed = own["source_type"] != SCANNER
    return own.assign(
        applied=own["applied"].where(~printed, True).fillna(True).astype(bool),
        notes=own["notes"].where(~printed, own["evidence_notes"]).fillna(own["evidence_notes"]),
    )


def write_jobmanager(
    conn: sa.Connection,
    plan: UpdatePlan,
    evidence: Evidence,
    projection: Projection,
    logs_failures: pd.DataFrame,
    run_id: str,
    report: WriteReport,
) -> WriteReport:
    """The jobmanager half of a write, step by step in one transaction (R18): each step fills
    the temp tables it reads and runs its set-based statements."""
    params = {"run_id": run_id, "source_type": plan.window.source_type}
    report.audit_rows_written = _write_audit(conn, _audit_table(plan, evidence, projection), params)
    report.attributions_withdrawn = _withdraw_attributions(conn, evidence, params)
    report.audit_rows_written += _apply_verdicts(conn, projection, params)
    report.attributions_withdrawn += _write_imposition_attributions(conn, plan, evidence, params)
    _write_print_state(conn, plan)
    report.changes_published = _publish_changes(conn, evidence, projection, params)
    report.job_states_changed = _write_operation_state(conn, projection)
    report.jobs_updated = _write_jobs_operations(conn)
    _record_failures(conn, plan, logs_failures, _reprojected(evidence), params, report)
    report.rows_marked_processed = _mark_processed(conn, plan, params)
    report.marker_after = _advance_marker(conn, plan)
    return report


def _audit_table(plan: UpdatePlan, evidence: Evidence, projection: Projection) -> pd.DataFrame:
    """The plan's own attributions with their verdicts, and the print rows outside the window
    whose counts it recomputed (always applied)."""
    return pd.concat(
        [
            _audit_rows(evidence, projection),
            plan.attributions[~plan.attributions["own"].astype(bool)].assign(
                applied=True, notes=lambda f: f["evidence_notes"]
            ),
        ],
        ignore_index=True,
    )


def _write_audit(conn: sa.Connection, audit: pd.DataFrame, params: dict) -> int:
    """R17: one audit row per (source, job version, operation); re-processing updates it."""
    # Statistics for the temp tables the audit UPDATEs join: without them the planner may hash
    # the whole audit instead of probing its key index (a cost growing with the history).
    _copy_into(
        conn,
        "tmp_attributions",
        audit,
        [*ATTRIBUTION_COLUMNS, "applied", "notes"],
        analyze=True,
    )
    written = conn.execute(
        sa.text("""
        INSERT INTO job_status_updates AS u (source_type, source_id, marker, job_id, version_tag,
            operation, status, printed_count, aborted_count, total_count, applied, notes,
            evidence_notes, event_time, run_id)
        SELECT source_type, source_id, marker, job_id, version_tag, operation, status,
               printed_count, aborted_count, total_count, applied, notes, evidence_notes,
               event_time, :run_id
        FROM tmp_attributions WHERE own
        ON CONFLICT ON CONSTRAINT job_status_updates_source_key DO UPDATE SET
            status = excluded.status, printed_count = excluded.printed_count,
            aborted_count = excluded.aborted_count, total_count = excluded.total_count,
            applied = excluded.applied, notes = excluded.notes, marker = excluded.marker,
            evidence_notes = excluded.evidence_notes, event_time = excluded.event_time,
            withdrawn_before = COALESCE(u.withdrawn_at, u.withdrawn_before),
            withdrawn_at = NULL, processed_at = now(), run_id = excluded.run_id
        WHERE (u.status, u.printed_count, u.aborted_count, u.total_count, u.applied, u.notes,
               u.marker, u.evidence_notes, u.event_time, u.withdrawn_at)
              IS DISTINCT FROM (excluded.status, excluded.printed_count, excluded.aborted_count,
               excluded.total_count, excluded.applied, excluded.notes, excluded.marker,
               excluded.evidence_notes, excluded.event_time, NULL)
    """),
        params,
    ).rowcount
    # Print rows outside the window: counts as they now stand after each event (R23).
    written += conn.execute(
        sa.text("""
        UPDATE job_status_updates u SET status = a.status, printed_count = a.printed_count,
            aborted_count = a.aborted_count, total_count = a.total_count, notes = a.notes,
            evidence_notes = a.evidence_notes, event_time = a.event_time, marker = a.marker,
            processed_at = now(), run_id = :run_id
        FROM tmp_attributions a
        WHERE NOT a.own AND u.source_type = a.source_type AND u.source_id = a.source_id
          AND u.job_id = a.job_id AND u.version_tag = a.version_tag
          AND u.operation = a.operation AND u.withdrawn_at IS NULL
          AND (u.status, u.printed_count, u.aborted_count, u.total_count, u.notes,
               u.evidence_notes, u.event_time, u.marker)
              IS DISTINCT FROM (a.status, a.printed_count, a.aborted_count, a.total_count,
               a.notes, a.evidence_notes, a.event_time, a.marker)
    """),
        params,
    ).rowcount
    return written


def _withdraw_attributions(conn: sa.Connection, evidence: Evidence, params: dict) -> int:
    """R22b: the audit keeps a withdrawn attribution and says when and why."""
    _copy_into(conn, "tmp_withdrawn", evidence.withdrawn, _ATTRIBUTION_KEY, analyze=True)
    return _mark_withdrawn(
        conn, "job_status_updates", "tmp_withdrawn", _ATTRIBUTION_KEY, "job version", params
    )


def _mark_withdrawn(
    conn: sa.Connection, table: str, withdrawn: str, key: list[str], what: str, params: dict
) -> int:
    """Audit rows of ``table`` keyed in the temp table ``withdrawn``: withdrawn now, with a note
    saying re-processing no longer attributes them to this ``what`` (R22b)."""
    return conn.execute(
        composed(
            """
        UPDATE {table} u SET withdrawn_at = now(), run_id = :run_id,
            notes = concat_ws('; ', u.notes, CAST(:note AS text))
        FROM {withdrawn} w
        WHERE u.source_type = :source_type AND {same_key} AND u.withdrawn_at IS NULL
    """,
            table=Identifier(table),
            withdrawn=Identifier(withdrawn),
            same_key=joined(
                " AND ",
                [sql.SQL("{} = {}").format(Identifier("u", k), Identifier("w", k)) for k in key],
            ),
        ),
        {**params, "note": f"withdrawn: re-processing no longer attributes it to this {what}"},
    ).rowcount


def _apply_verdicts(conn: sa.Connection, projection: Projection, params: dict) -> int:
    """R23: later scans of the same keys may change verdict when an earlier one arrives late."""
    _copy_into(
        conn, "tmp_verdicts", projection.verdicts, list(projection.verdicts.columns), analyze=True
    )
    return conn.execute(
        sa.text("""
        UPDATE job_status_updates u SET applied = v.applied, notes = v.notes,
            processed_at = now(), run_id = :run_id
        FROM tmp_verdicts v
        WHERE u.source_type = v.source_type AND u.source_id = v.source_id
          AND u.job_id = v.job_id AND u.version_tag = v.version_tag
          AND u.operation = v.operation AND u.withdrawn_at IS NULL
          AND (u.applied, u.notes) IS DISTINCT FROM (v.applied, v.notes)
    """),
        params,
    ).rowcount


def _write_imposition_attributions(
    conn: sa.Connection, plan: UpdatePlan, evidence: Evidence, params: dict
) -> int:
    """The imposition audit, upserted, and its withdrawn attributions marked (R22b); returns
    how many were withdrawn."""
    _copy_into(
        conn,
        "tmp_imposition_attributions",
        plan.imposition_attributions,
        IMPOSITION_ATTRIBUTION_COLUMNS,
    )
    _copy_into(conn, "tmp_imposition_withdrawn", evidence.imposition_withdrawn, _IMPOSITION_KEY)
    conn.execute(
        sa.text("""
        INSERT INTO imposition_status_updates AS u (source_type, source_id, marker,
            imposition_id, operation, status, event_time, evidence_notes, notes, run_id)
        SELECT source_type, source_id, marker, imposition_id, operation, status, event_time,
               evidence_notes, evidence_notes, :run_id
        FROM tmp_imposition_attributions
        ON CONFLICT ON CONSTRAINT imposition_status_updates_source_key DO UPDATE SET
            status = excluded.status, marker = excluded.marker,
            event_time = excluded.event_time, evidence_notes = excluded.evidence_notes,
            notes = excluded.notes, withdrawn_at = NULL, processed_at = now(),
            withdrawn_before = COALESCE(u.withdrawn_at, u.withdrawn_before),
            run_id = excluded.run_id
        WHERE (u.status, u.marker, u.event_time, u.evidence_notes, u.withdrawn_at)
              IS DISTINCT FROM (excluded.status, excluded.marker, excluded.event_time,
               excluded.evidence_notes, NULL)
    """),
        params,
    )
    return _mark_withdrawn(
        conn,
        "imposition_status_updates",
        "tmp_imposition_withdrawn",
        _IMPOSITION_KEY,
        "imposition",
        params,
    )


def _write_print_state(conn: sa.Connection, plan: UpdatePlan) -> None:
    """R11/R12: PrintOS's print state of the reached jobs, replaced as a whole per job."""
    _copy_into(conn, "tmp_print_state", plan.print_state, PRINT_STATE_COLUMNS)
    _copy_into(conn, "tmp_print_jobs", pd.DataFrame({"job_id": plan.print_jobs}), ["job_id"])
    conn.execute(
        sa.text("""
        DELETE FROM job_print_state s USING tmp_print_jobs j
        WHERE s.job_id = j.job_id AND NOT EXISTS (SELECT 1 FROM tmp_print_state t
            WHERE t.job_id = s.job_id AND t.version_tag = s.version_tag)
    """)
    )
    conn.execute(
        sa.text("""
        INSERT INTO job_print_state AS s (job_id, version_tag, status, printed_count,
            aborted_count, total_count, highest, notes, event_time, source_id)
        SELECT job_id, version_tag, status, printed_count, aborted_count, total_count, highest,
               notes, event_time, source_id FROM tmp_print_state
        ON CONFLICT (job_id, version_tag) DO UPDATE SET status = excluded.status,
            printed_count = excluded.printed_count, aborted_count = excluded.aborted_count,
            total_count = excluded.total_count, highest = excluded.highest,
            notes = excluded.notes, event_time = excluded.event_time,
            source_id = excluded.source_id, updated_at = now()
        WHERE (s.status, s.printed_count, s.aborted_count, s.total_count, s.highest, s.notes,
               s.event_time, s.source_id)
              IS DISTINCT FROM (excluded.status, excluded.printed_count, excluded.aborted_count,
               excluded.total_count, excluded.highest, excluded.notes, excluded.event_time,
               excluded.source_id)
    """)
    )


# R25: the keys whose state this write changes, each a new change numbered after the last one
# (gap-free: the writers' lock is held, so no other change is drawn meanwhile). A key whose
# state is unchanged (a re-run) adds nothing; a key that no longer holds a state is withdrawn.
# The source's marker comes from the audit row of that source and key.
_CHANGES_SQL = """
WITH base AS (
    SELECT COALESCE((SELECT max(change_id) FROM job_status_changes),
                    (SELECT max(update_id) FROM job_status_updates), 0) AS last_id
), changed AS (
    SELECT t.*, 'status' AS event,
           -- the key's last change, a withdrawal too (job_version_state no longer holds it)
           COALESCE(s.change_id, (SELECT max(l.change_id) FROM job_status_changes l
               WHERE l.job_id = t.job_id AND l.version_tag = t.version_tag
                 AND l.operation = t.operation)) AS previous_change_id
    FROM tmp_version_state t LEFT JOIN job_version_state s
      ON s.job_id = t.job_id AND s.version_tag = t.version_tag AND s.operation = t.operation
    WHERE s.job_id IS NULL
       OR (s.status, s.printed_count, s.aborted_count, s.total_count, s.notes, s.event_time,
           s.source_type, s.source_id)
          IS DISTINCT FROM (t.status, t.printed_count, t.aborted_count, t.total_count, t.notes,
           t.event_time, t.source_type, t.source_id)
    UNION ALL
    SELECT w.job_id, w.version_tag, w.operation, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, 'withdrawn', s.change_id
    FROM tmp_version_withdrawn w JOIN job_version_state s
      ON s.job_id = w.job_id AND s.version_tag = w.version_tag AND s.operation = w.operation
    UNION ALL
    -- a key processed before the stream existed (an install upgraded to 0016): never published,
    -- but attributed by the audit, so a reader of the old feed may hold it: withdrawn, once
    SELECT w.job_id, w.version_tag, w.operation, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           NULL, 'withdrawn', NULL
    FROM tmp_version_withdrawn w
    WHERE NOT EXISTS (SELECT 1 FROM job_version_state s WHERE s.job_id = w.job_id
                        AND s.version_tag = w.version_tag AND s.operation = w.operation)
      AND NOT EXISTS (SELECT 1 FROM job_status_changes l WHERE l.job_id = w.job_id
                        AND l.version_tag = w.version_tag AND l.operation = w.operation)
      AND EXISTS (SELECT 1 FROM job_status_updates u WHERE u.job_id = w.job_id
                    AND u.version_tag = w.version_tag AND u.operation = w.operation)
)
INSERT INTO job_status_changes (change_id, job_id, version_tag, operation, event, status,
    printed_count, aborted_count, total_count, notes, event_time, source_type, source_id,
    source_marker, previous_change_id, run_id)
SELECT base.last_id + row_number() OVER (ORDER BY c.job_id, c.version_tag, c.operation),
       c.job_id, c.version_tag, c.operation, c.event, c.status, c.printed_count,
       c.aborted_count, c.total_count, c.notes, c.event_time, c.source_type, c.source_id,
       (SELECT u.marker FROM job_status_updates u WHERE u.source_type = c.source_type
          AND u.source_id = c.source_id AND u.job_id = c.job_id
          AND u.version_tag = c.version_tag AND u.operation = c.operation),
       c.previous_change_id, :run_id
FROM changed c CROSS JOIN base
"""


def _publish_changes(
    conn: sa.Connection, evidence: Evidence, projection: Projection, params: dict
) -> int:
    """R25: each change of a projected key's state becomes a new entry of the change stream
    (the feed, which the deliverer copies into the webhooks' outbox), in the order the state went
    through them; job_version_state then holds what a reader folding the stream holds."""
    _copy_into(
        conn,
        "tmp_version_state",
        version_state(projection.job_ops, evidence.print_state),
        VERSION_STATE_COLUMNS,
        analyze=True,
    )
    _copy_into(conn, "tmp_version_withdrawn", projection.job_ops_withdrawn, _VERSION_KEY)
    before = conn.execute(sa.text("SELECT max(change_id) FROM job_status_changes")).scalar()
    published = conn.execute(sa.text(_CHANGES_SQL), params).rowcount
    if not published:
        return 0
    conn.execute(
        sa.text("""
        INSERT INTO job_version_state AS s (job_id, version_tag, operation, status,
            printed_count, aborted_count, total_count, notes, event_time, source_type,
            source_id, change_id)
        SELECT job_id, version_tag, operation, status, printed_count, aborted_count,
               total_count, notes, event_time, source_type, source_id, change_id
        FROM job_status_changes WHERE change_id > :before AND event = 'status'
        ON CONFLICT (job_id, version_tag, operation) DO UPDATE SET status = excluded.status,
            printed_count = excluded.printed_count, aborted_count = excluded.aborted_count,
            total_count = excluded.total_count, notes = excluded.notes,
            event_time = excluded.event_time, source_type = excluded.source_type,
            source_id = excluded.source_id, change_id = excluded.change_id, updated_at = now()
    """),
        {"before": before or 0},
    )
    conn.execute(
        sa.text("""
        DELETE FROM job_version_state s USING tmp_version_withdrawn w
        WHERE s.job_id = w.job_id AND s.version_tag = w.version_tag AND s.operation = w.operation
    """)
    )
    return published


def _write_operation_state(conn: sa.Connection, projection: Projection) -> int:
    """R15 state per (job, operation) as projected; jobs.operations is its projection."""
    _copy_into(
        conn,
        "tmp_job_state",
        projection.job_state,
        list(projection.job_state.columns),
        analyze=True,
    )
    _copy_into(
        conn, "tmp_job_state_withdrawn", projection.job_state_withdrawn, ["job_id", "operation"]
    )
    changed = conn.execute(
        sa.text("""
        INSERT INTO job_operation_state AS s (job_id, operation, value, status, version_tag,
            precedence, state_based, event_time, source_type, source_id, notes)
        SELECT job_id, operation, value, status, version_tag, precedence, false, event_time,
               source_type, source_id, notes FROM tmp_job_state
        ON CONFLICT (job_id, operation) DO UPDATE SET value = excluded.value,
            status = excluded.status, version_tag = excluded.version_tag,
            precedence = excluded.precedence, event_time = excluded.event_time,
            source_type = excluded.source_type, source_id = excluded.source_id,
            notes = excluded.notes, updated_at = now()
        WHERE (s.value, s.status, s.version_tag, s.precedence, s.event_time, s.source_type,
               s.source_id, s.notes) IS DISTINCT FROM (excluded.value, excluded.status,
               excluded.version_tag, excluded.precedence, excluded.event_time,
               excluded.source_type, excluded.source_id, excluded.notes)
    """)
    ).rowcount
    changed += conn.execute(
        sa.text("""
        DELETE FROM job_operation_state s USING tmp_job_state_withdrawn w
        WHERE s.job_id = w.job_id AND s.operation = w.operation
    """)
    ).rowcount
    return changed


def _write_jobs_operations(conn: sa.Connection) -> int:
    """jobs.operations: the operation state just written, merged into each job's JSON. A value
    that is JSON but not an object (null, a string, a number, an array) cannot be merged into:
    it is left as the shop holds it, never corrupted, and ``write_failures`` records it (R20).
    SQL NULL is the empty object, as before."""
    return conn.execute(
        composed(
            """
        UPDATE jobs j SET operations = (COALESCE(j.operations, '{{}}'::jsonb) - p.removed) || p.ops
        FROM (SELECT job_id,
                     COALESCE(jsonb_object_agg(operation, value)
                              FILTER (WHERE value IS NOT NULL), '{{}}'::jsonb) AS ops,
                     COALESCE(array_agg(operation) FILTER (WHERE value IS NULL), '{{}}') AS removed
              FROM (SELECT job_id, operation, value FROM tmp_job_state
                    UNION ALL SELECT job_id, operation, NULL FROM tmp_job_state_withdrawn) x
              GROUP BY job_id) p
        WHERE {job_id} = p.job_id
          AND (j.operations IS NULL OR jsonb_typeof(j.operations) = 'object')
          AND (COALESCE(j.operations, '{{}}'::jsonb) - p.removed) || p.ops
              IS DISTINCT FROM COALESCE(j.operations, '{{}}'::jsonb)
    """,
            job_id=trimmed(Identifier("j", "job_id")),
        )
    ).rowcount


def _reprojected(evidence: Evidence) -> pd.DataFrame:
    """The subjects of the target keys this write projected again: their failures about the
    key (missing row, operation with no code) are this write's to record or resolve."""
    subjects = pd.concat(
        [
            key_subjects(evidence.touched_versions, ["job_id", "version_tag"]),
            key_subjects(evidence.touched_impositions, ["imposition_id"]),
        ],
        ignore_index=True,
    )
    return pd.DataFrame({"subject": _failure_subject(subjects)}).drop_duplicates()


def _failure_subject(subjects: pd.Series) -> pd.Series:
    # Hostile input must not break the unique index (btree rows are limited to ~2.7 kB): a long
    # subject keeps its start and a digest of the whole (R20), so it stays one row per value.
    return short_subjects(subjects)


def _record_failures(
    conn: sa.Connection,
    plan: UpdatePlan,
    logs_failures: pd.DataFrame,
    reprojected: pd.DataFrame,
    params: dict,
    report: WriteReport,
) -> None:
    """This run's failures (the plan's and the logs write's) and the rows it processed."""
    failures = pd.concat([plan.failures, logs_failures], ignore_index=True)
    failures["subject"] = _failure_subject(failures["subject"])
    failures["detail"] = failures["detail"].astype("string").str.slice(0, 2000)
    _copy_into(conn, "tmp_failures", failures, FAILURE_COLUMNS, analyze=True)
    _copy_into(conn, "tmp_processed", plan.processed, ["source_id", "marker", "kind"], analyze=True)
    _copy_into(conn, "tmp_reprojected", reprojected, ["subject"], analyze=True)
    write_failures(conn, params, report)


def _mark_processed(conn: sa.Connection, plan: UpdatePlan, params: dict) -> int:
    """R19: every row this run processed, so the sweep never loads it again, at its marker now
    (R22b: a row the shop moved is processed where it is); a row the shop deleted is no longer
    a processed row."""
    forgotten = conn.execute(
        sa.text("""
        DELETE FROM processed_source_rows r USING tmp_processed t
        WHERE r.source_type = :source_type AND r.source_id = t.source_id AND t.kind = :gone
    """),
        {**params, "gone": GONE},
    ).rowcount
    return (
        forgotten
        + conn.execute(
            sa.text("""
        INSERT INTO processed_source_rows AS r (source_type, source_id, marker, run_id,
            processed_at)
        SELECT :source_type, source_id, marker, :run_id, CAST(:processing_time AS timestamp)
        FROM tmp_processed WHERE kind <> :gone
        ON CONFLICT (source_type, source_id) DO UPDATE SET marker = excluded.marker
        WHERE r.marker IS DISTINCT FROM excluded.marker
    """),
            {**params, "processing_time": plan.processing_time, "gone": GONE},
        ).rowcount
    )


def _advance_marker(conn: sa.Connection, plan: UpdatePlan) -> int:
    """The sweep, the marker and the generation; returns the marker now stored."""
    window = plan.window
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
            "marker_type": source_named(window.source_type).marker_type,
            "from_marker": window.from_marker,
            "to_marker": advance_to(plan),
        },
    )
    marker_after = int(
        conn.execute(
            sa.text("SELECT last_processed_id FROM processing_markers WHERE marker_type = :t"),
            {"t": source_named(window.source_type).marker_type},
        ).scalar_one()
    )
    # R24: a plan read at an older generation is made again under the lock.
    conn.execute(sa.text("UPDATE processing_generation SET generation = generation + 1"))
    return marker_after


def write_failures(conn: sa.Connection, params: dict, report: WriteReport) -> None:
    """R16/R20: failures of this run recorded, those of its rows that did not recur resolved."""
    # A job absent from jobs is skipped there and recorded, retryably (it may arrive).
    conn.execute(
        composed(
            """
        INSERT INTO tmp_failures (source_type, source_id, reason, subject, detail, retryable)
        SELECT DISTINCT a.source_type, a.source_id, 'missing_job', a.job_id,
               'job ' || a.job_id || ' is not in jobs; jobs.operations not written', true
        FROM tmp_attributions a
        WHERE a.own AND NOT EXISTS (SELECT 1 FROM jobs j WHERE {job_id} = a.job_id)
    """,
            job_id=trimmed(Identifier("j", "job_id")),
        )
    )
    # R20: a jobs.operations value that is not a JSON object was left untouched (see
    # _write_jobs_operations); each row that would write it records so, retryably (the shop
    # may fix the value). One statement for the whole window, like missing_job.
    conn.execute(
        composed(
            """
        INSERT INTO tmp_failures (source_type, source_id, reason, subject, detail, retryable)
        SELECT DISTINCT a.source_type, a.source_id, 'operations_not_object', a.job_id,
               'jobs.operations of job ' || a.job_id || ' is a JSON '
               || jsonb_typeof(j.operations) || ', not an object; left as it is, not written',
               true
        FROM tmp_attributions a JOIN jobs j ON {job_id} = a.job_id
        WHERE a.own AND jsonb_typeof(j.operations) <> 'object'
    """,
            job_id=trimmed(Identifier("j", "job_id")),
        )
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
              FROM tmp_failures x LEFT JOIN tmp_processed p ON p.source_id = x.source_id
                   AND x.source_type = :source_type) t
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
                          AND t.source_type = f.source_type
                          AND t.reason = f.reason AND COALESCE(t.subject, '') = f.subject)
    """),
        params,
    ).rowcount
    # R22: a failure about a target key belongs to the key's winner; one superseded by a later
    # winner (another source row, either source) is resolved, whatever the windowing.
    report.failures_resolved += conn.execute(
        sa.text("""
        UPDATE processing_failures f SET resolved_at = now(), run_id = :run_id
        FROM tmp_reprojected k
        WHERE f.subject = k.subject AND f.resolved_at IS NULL
          AND f.reason IN ('missing_operation_row', 'unmapped_operation')
          AND NOT EXISTS (SELECT 1 FROM tmp_failures t WHERE t.source_id = f.source_id
                          AND t.source_type = f.source_type
                          AND t.reason = f.reason AND COALESCE(t.subject, '') = f.subject)
    """),
        params,
    ).rowcount


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
            "marker_type": source_named(source_type).marker_type,
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
    """R18: logs commit first, then one jobmanager transaction; the writers' lock spans both.

    R24: a plan read at an older generation than the one found under the lock is made again,
    under the lock, before anything is written.
    """
    transient_point("write")
    with jobmanager.connect() as jm, jm.begin():
        jm.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITER_LOCK})
        marker_before = lock_marker(jm, plan.window.source_type)
        replanned = 0
        if plan.generation != read_generation(jm) and plan.replan is not None:
            plan, replanned = plan.replan(), 1
        evidence = gather_evidence(jm, plan, logs)
        projection = project(
            evidence.touched_versions,
            evidence.touched_impositions,
            evidence.scanner,
            evidence.impositions,
            evidence.print_state,
            evidence.versions,
        )
        with logs.begin() as lg:
            report, logs_failures = write_logs(
                lg, projection, evidence.touched_versions, evidence.touched_impositions
            )
        crash_point("after_logs_commit")
        report.marker_before = marker_before
        report.replanned = replanned
        write_jobmanager(jm, plan, evidence, projection, logs_failures, run_id, report)
        crash_point("before_jobmanager_commit")
    crash_point("after_jobmanager_commit")
    return report
