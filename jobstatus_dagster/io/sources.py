"""Loading windows of source rows and the reference data they resolve against.

Every function here is a fixed number of set-based queries, whatever the number of rows.
Identifiers come from the constant ``Source`` descriptions (jobstatus_dagster.source); values
are always bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

import pandas as pd
import sqlalchemy as sa
from psycopg import sql

from jobstatus_dagster.config import Processing
from jobstatus_dagster.core.identifiers import (
    FILE_JOB_SQL,
    normalise_operation_codes,
    trim_id,
)
from jobstatus_dagster.core.plan import GONE, PRINT_OS, Position, Sweep, Window
from jobstatus_dagster.core.print_status import expand_to_files, validate_events
from jobstatus_dagster.core.resolution import (
    PrintReferences,
    ScanReferences,
    ambiguous_runlists,
    classify_scans,
    has_code,
    holding_impositions,
    job_file_rows,
    job_scans_of,
    prepare_scans,
    print_job_ids,
    runlist_candidates,
)
from jobstatus_dagster.io.compose import (
    Identifier,
    composed,
    composed_text,
    expression,
    joined,
    statement,
    trimmed,
)
from jobstatus_dagster.source import PRINT_OS_SOURCE, Source, source_named


def finite_time(column: str) -> str:
    """A timestamp Python can hold, else NULL (R20: 'infinity' or a year past 9999 is no time,
    so the row falls back like a missing time instead of stopping the source)."""
    return (
        f"CASE WHEN isfinite({column}) AND {column} BETWEEN '0001-01-01' AND '9999-12-31'"
        f" THEN {column} END"
    )


# R14: where a row has no time of its own, the time it was first processed, recorded once.
_FIRST_PROCESSED = (
    "(SELECT r.processed_at FROM processed_source_rows r"
    " WHERE r.source_type = '{0}' AND r.source_id = p.{1})"
)


def event_time_sql(source: Source) -> str:
    """R14: a row ``p``'s own time (the first of its time columns set and finite), else the time
    it was first processed."""
    own = ", ".join(finite_time(f"p.{column}") for column in source.event_time_columns)
    first_processed = _FIRST_PROCESSED.format(source.name, source.id_column)
    return f"COALESCE({own}, {first_processed})"


def select_list(source: Source) -> str:
    """source_id, marker, the source's own columns and event_time of a row ``p``."""
    own = ", ".join(f"p.{expression} AS {name}" for expression, name in source.row_columns)
    return (
        f"p.{source.id_column} AS source_id, p.{source.marker_column} AS marker, {own},"
        f" {event_time_sql(source)} AS event_time"
    )


def _parts(src: Source) -> dict[str, sql.Composable]:
    """One source table's identifiers for composed statements (``p`` is the table's alias)."""
    return {
        "table": Identifier(src.table_name),
        "select_list": expression(select_list(src)),
        "marker": Identifier("p", src.marker_column),
        "id": Identifier("p", src.id_column),
        "m": Identifier(src.marker_column),
    }


def _not_processed(src: Source) -> sql.Composed:
    return sql.SQL(
        "NOT EXISTS (SELECT 1 FROM processed_source_rows r"
        " WHERE r.source_type = :source_type AND r.source_id = {id})"
    ).format(id=Identifier("p", src.id_column))


# Window rows, late rows (R19), marker-less rows, rows processed in the window whose marker the
# shop has changed since (R22b: re-processed where they were, withdrawn there), and rows of
# retryable failures (R20).
_WINDOW = """
    SELECT * FROM (
        SELECT {select_list}, 'window' AS kind FROM {table} p
        WHERE {marker} > :from_marker AND {marker} <= :to_marker
    ) w
    UNION ALL
    SELECT * FROM (
        SELECT {select_list}, 'late' AS kind FROM {table} p
        -- the lookback saturates at the bigint minimum (a backfill may start there): bigint
        -- arithmetic on both sides, so the marker index still serves the range
        WHERE {marker} > GREATEST(:from_marker, CAST(-9223372036854775808 AS bigint) + :lookback)
                         - :lookback
          AND {marker} <= :from_marker AND {not_processed}
        ORDER BY {marker} LIMIT :late_limit
    ) l
    UNION ALL
    SELECT * FROM (
        SELECT {select_list}, 'late' AS kind FROM {table} p
        WHERE {marker} IS NULL AND {not_processed}
        ORDER BY {id} LIMIT :late_limit
    ) n
    UNION ALL
    SELECT * FROM (
        SELECT {select_list}, 'moved' AS kind FROM {table} p
        JOIN processed_source_rows r ON r.source_type = :source_type AND r.source_id = {id}
        WHERE r.marker > :from_marker AND r.marker <= :to_marker
          AND {marker} IS DISTINCT FROM r.marker
    ) m
    UNION ALL
    SELECT * FROM (
        SELECT {select_list}, 'retry' AS kind FROM {table} p
        WHERE {id} IN (
            SELECT f.source_id FROM processing_failures f
            WHERE f.source_type = :source_type AND f.resolved_at IS NULL AND f.retryable
              AND f.attempts < :retry_limit
              AND f.last_attempt_at <= now() - make_interval(secs => :retry_interval)
            GROUP BY f.source_id ORDER BY min(f.last_attempt_at) LIMIT :retry_batch)
    ) r
    """


def _window_sql(src: Source) -> str:
    """The window statement of one source table (bound parameters as ``:name``)."""
    return composed_text(_WINDOW, **_parts(src), not_processed=_not_processed(src))


def load_window(
    conn: sa.Connection,
    window: Window,
    *,
    lookback: int,
    late_limit: int,
    retry_limit: int,
    retry_batch: int,
    retry_interval: int,
) -> pd.DataFrame:
    """The rows one run processes; a row appears once (window before late before retry)."""
    src = source_named(window.source_type)
    rows = pd.read_sql(
        sa.text(_window_sql(src)),
        conn,
        params={
            "source_type": window.source_type,
            "from_marker": window.from_marker,
            "to_marker": window.to_marker,
            "lookback": lookback,
            "late_limit": late_limit,
            "retry_limit": retry_limit,
            "retry_batch": retry_batch,
            "retry_interval": retry_interval,
        },
    )
    gone = pd.read_sql(
        sa.text(composed_text(_GONE, **_parts(src))),
        conn,
        params={
            "source_type": window.source_type,
            "from_marker": window.from_marker,
            "to_marker": window.to_marker,
        },
    )
    if len(gone):
        rows = pd.concat([rows, gone.assign(kind=GONE)], ignore_index=True)
    rows["source_id"] = rows["source_id"].astype("int64")
    rows["marker"] = rows["marker"].astype("Int64")
    return rows.drop_duplicates("source_id", keep="first").reset_index(drop=True)


# R22b: rows processed in the window (or with no marker: no window holds them) that the shop
# has deleted since; what they were attributed is withdrawn, and they are no longer processed.
_GONE = """
    SELECT r.source_id, r.marker FROM processed_source_rows r
    WHERE r.source_type = :source_type
      AND ((r.marker > :from_marker AND r.marker <= :to_marker) OR r.marker IS NULL)
      AND NOT EXISTS (SELECT 1 FROM {table} p WHERE {id} = r.source_id)
    ORDER BY r.source_id
    """


def _position_after(src: Source, param: str) -> sql.Composed:
    """Rows after a (marker, id) position in marker order; index-backed either way."""
    marker, row_id = Identifier("p", src.marker_column), Identifier("p", src.id_column)
    at_marker, at_id = sql.SQL(f":{param}_marker"), sql.SQL(f":{param}_id")
    if src.id_column == src.marker_column:
        return sql.SQL("{} > {}").format(marker, at_marker)
    return sql.SQL("({}, {}) > ({}, {})").format(marker, row_id, at_marker, at_id)


def _sweep_filter(src: Source, start: Position | None, end: Position | None) -> sql.Composed:
    """The slice (start, end] of rows at or below :upper in marker order."""
    parts: list[sql.Composable] = [
        sql.SQL("{} <= :upper").format(Identifier("p", src.marker_column))
    ]
    if start is not None:
        parts.append(_position_after(src, "start"))
    if end is not None:
        parts.append(sql.SQL("NOT ({})").format(_position_after(src, "end")))
    return joined(" AND ", parts)


def _sweep_params(start: Position | None, end: Position | None, upper: int) -> dict:
    params: dict = {"upper": upper}
    for name, position in (("start", start), ("end", end)):
        if position is not None:
            params[f"{name}_marker"], params[f"{name}_id"] = position
    return params


def read_sweep_start(conn: sa.Connection, source_type: str) -> Position | None:
    row = conn.execute(
        sa.text(
            "SELECT sweep_marker, sweep_source_id FROM processing_markers WHERE marker_type = :t"
        ),
        {"t": source_named(source_type).marker_type},
    ).one_or_none()
    if row is None or row[0] is None or row[1] is None:
        return None
    return int(row[0]), int(row[1])


def next_sweep(conn: sa.Connection, source_type: str, upper: int, rows: int) -> Sweep:
    """The next slice of ``rows`` rows at or below ``upper`` (the window start) after where the
    last run's sweep ended: one index range scan, whatever the history's size."""
    return sweep_slice(conn, source_type, read_sweep_start(conn, source_type), upper, rows)


def sweep_slice(
    conn: sa.Connection, source_type: str, start: Position | None, upper: int, rows: int
) -> Sweep:
    """The slice of ``rows`` rows at or below ``upper`` after ``start`` (None: the lowest)."""
    src = source_named(source_type)
    last = conn.execute(
        composed(
            "SELECT {marker}, {id} FROM {table} p WHERE {slice}"
            " ORDER BY {marker}, {id} OFFSET :skip LIMIT 1",
            **_parts(src),
            slice=_sweep_filter(src, start, None),
        ),
        {**_sweep_params(start, None, upper), "skip": rows - 1},
    ).one_or_none()
    return Sweep(start, None if last is None else (int(last[0]), int(last[1])))


def _unprocessed_in_sweep(src: Source, sweep: Sweep, select: str) -> sql.Composed:
    """The LIMIT tells the planner the slice is small: index probes into processed_source_rows,
    never a hash of the whole history."""
    parts = _parts(src)
    return sql.SQL(
        "SELECT {select} FROM (SELECT * FROM {table} p WHERE {slice}"
        " ORDER BY {marker}, {id} LIMIT :sweep_rows) p WHERE {not_processed}"
    ).format(
        select=expression(select),
        table=parts["table"],
        marker=parts["marker"],
        id=parts["id"],
        slice=_sweep_filter(src, sweep.start, sweep.end),
        not_processed=_not_processed(src),
    )


def load_sweep(
    conn: sa.Connection, source_type: str, sweep: Sweep, upper: int, rows: int
) -> pd.DataFrame:
    """R19 for any marker: rows of the sweep's slice that were never processed (kind 'late'),
    e.g. rows committed with a marker far below the marker, or negative."""
    src = source_named(source_type)
    found = pd.read_sql(
        statement(_unprocessed_in_sweep(src, sweep, f"{select_list(src)}, 'late' AS kind")),
        conn,
        params={
            **_sweep_params(sweep.start, sweep.end, upper),
            "source_type": source_type,
            "sweep_rows": rows,
        },
    )
    found["source_id"] = found["source_id"].astype("int64")
    found["marker"] = found["marker"].astype("Int64")
    return found


def read_marker(conn: sa.Connection, source_type: str) -> int:
    value = conn.execute(
        sa.text("SELECT last_processed_id FROM processing_markers WHERE marker_type = :t"),
        {"t": source_named(source_type).marker_type},
    ).scalar_one_or_none()
    return int(value or 0)


def rows_past_marker(conn: sa.Connection, source_type: str, cap: int) -> int:
    """Rows past the source's marker, counted up to ``cap`` (an index range scan, however far
    behind): what the marker check and the alert compare with JOBSTATUS_MAX_MARKER_LAG."""
    src = source_named(source_type)
    return conn.execute(
        composed(
            "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {m} > :marker LIMIT :cap) x",
            **_parts(src),
        ),
        {"marker": read_marker(conn, source_type), "cap": cap},
    ).scalar_one()


# R22b: the markers a backfill covers are those of the rows there now and of the rows processed
# there (a row the shop deleted or moved since is withdrawn by a window over its old marker).
_MARKERS_IN_RANGE = """(SELECT {m} AS marker FROM {table} WHERE {m} > :lo AND {m} <= :hi
      UNION ALL SELECT marker FROM processed_source_rows
      WHERE source_type = :source_type AND marker > :lo AND marker <= :hi) k"""
_MARKER_BOUNDS = """SELECT
    least((SELECT min({m}) FROM {table}), (SELECT min(marker) FROM processed_source_rows
          WHERE source_type = :source_type)),
    greatest((SELECT max({m}) FROM {table}), (SELECT max(marker) FROM processed_source_rows
          WHERE source_type = :source_type))"""


def _markers_in_range(source_type: str) -> sql.Composed:
    return sql.SQL(_MARKERS_IN_RANGE).format(**_parts(source_named(source_type)))


def marker_bounds(conn: sa.Connection, source_type: str) -> tuple[int | None, int | None]:
    """Lowest and highest marker present in the source table or processed from it."""
    lowest, highest = conn.execute(
        composed(_MARKER_BOUNDS, **_parts(source_named(source_type))),
        {"source_type": source_type},
    ).one()
    return (None if lowest is None else int(lowest), None if highest is None else int(highest))


def next_chunk(
    conn: sa.Connection, source_type: str, after: int, up_to: int, chunk_size: int
) -> tuple[int, int] | None:
    """First and last marker of the next ``chunk_size`` rows in (after, up_to], or None."""
    first, last = conn.execute(
        composed(
            "SELECT min({m}), max({m}) FROM (SELECT {m} FROM {table}"
            " WHERE {m} > :lo AND {m} <= :hi ORDER BY {m} LIMIT :chunk) w",
            **_parts(source_named(source_type)),
        ),
        {"lo": after, "hi": up_to, "chunk": chunk_size},
    ).one()
    return None if first is None else (int(first), int(last))


def next_processed_chunk(
    conn: sa.Connection, source_type: str, after: int, up_to: int, chunk_size: int
) -> tuple[int, int] | None:
    """``next_chunk`` over the markers of the rows processed (R22b: past the last row present,
    only rows the shop deleted or moved since are left there)."""
    first, last = conn.execute(
        sa.text(
            "SELECT min(marker), max(marker) FROM (SELECT marker FROM processed_source_rows"
            " WHERE source_type = :source_type AND marker > :lo AND marker <= :hi"
            " ORDER BY marker LIMIT :chunk) w"
        ),
        {"lo": after, "hi": up_to, "chunk": chunk_size, "source_type": source_type},
    ).one()
    return None if first is None else (int(first), int(last))


def marker_buckets(
    engine: sa.Engine, source_type: str, after: int, up_to: int, width: int
) -> list[int]:
    """The lower bounds of the marker-range buckets (lo, lo + width] holding rows in
    (after, up_to], now or when processed, ascending: a backfill runs the ranges that have
    rows, not the empty ones."""
    with engine.connect() as conn:
        rows = conn.execute(
            composed(
                "SELECT DISTINCT floor((marker - 1)::numeric / :width)::bigint * :width AS lo"
                " FROM {markers} ORDER BY lo",
                markers=_markers_in_range(source_type),
            ),
            {"lo": after, "hi": up_to, "width": width, "source_type": source_type},
        ).scalars()
        return [int(lo) for lo in rows]


def chunk_reader(
    engine: sa.Engine, source_type: str, chunk_size: int
) -> Callable[[int, int], tuple[int, int] | None]:
    """``next_chunk`` on a fresh connection per call, for planning backfill windows. Windows are
    contiguous from the range's start, so they cover the markers of rows processed and deleted
    or moved since between present rows (R22b); past the last present row, the processed rows'
    markers give the last windows."""

    def read(after: int, up_to: int) -> tuple[int, int] | None:
        with engine.connect() as conn:
            return next_chunk(conn, source_type, after, up_to, chunk_size) or next_processed_chunk(
                conn, source_type, after, up_to, chunk_size
            )

    return read


def engine_marker_bounds(engine: sa.Engine, source_type: str) -> tuple[int | None, int | None]:
    with engine.connect() as conn:
        return marker_bounds(conn, source_type)


class StoredSweep(Enum):
    """Where the history sweep stands in ``processing_markers`` (runs move it)."""

    POSITION = "stored"


@dataclass(frozen=True)
class Backlog:
    """What a look at the source sees past and below the marker: cheap, index-only questions."""

    marker: int
    next_to: int | None  # end of the next window, None when nothing is past the marker
    next_from: int | None  # the first marker past the marker
    late_rows: int  # below the marker, never processed: look-back, NULL markers, sweep slice
    due_retries: int
    retry_signature: str  # changes with every attempt
    sweep: Sweep = Sweep(None, None)  # the history slice looked at
    swept_rows: int = 0  # never-processed rows in it (up to 1000)
    next_rows: int = 0  # rows in the next chunk past the marker


def source_backlog(
    engine: sa.Engine,
    source_type: str,
    settings: Processing,
    sweep_after: Position | None | StoredSweep = StoredSweep.POSITION,
) -> Backlog:
    """``inspect_backlog`` on a connection of its own."""
    with engine.connect() as conn:
        return inspect_backlog(conn, source_type, settings, sweep_after)


def inspect_backlog(
    conn: sa.Connection,
    source_type: str,
    settings: Processing,
    sweep_after: Position | None | StoredSweep = StoredSweep.POSITION,
) -> Backlog:
    """What there is to process; reads only. The history slice looked at starts after
    ``sweep_after``: by default where the runs' sweep stands (R19), or where a sensor's own look
    has reached."""
    chunk_size, lookback = settings.chunk_size, settings.late_row_lookback
    retry_limit, retry_interval = settings.retry_limit, settings.retry_interval_seconds
    sweep_rows = settings.sweep_rows
    src = source_named(source_type)
    marker = read_marker(conn, source_type)
    next_from, next_to, next_rows = conn.execute(
        composed(
            "SELECT min({m}), max({m}), count(*) FROM (SELECT {m} FROM {table}"
            " WHERE {m} > :marker ORDER BY {m} LIMIT :chunk) w",
            **_parts(src),
        ),
        {"marker": marker, "chunk": chunk_size},
    ).one()
    if isinstance(sweep_after, StoredSweep):
        sweep = next_sweep(conn, source_type, marker, sweep_rows)
    else:
        sweep = sweep_slice(conn, source_type, sweep_after, marker, sweep_rows)
    swept = conn.execute(
        statement(
            sql.SQL("SELECT count(*) FROM ({} LIMIT 1000) x").format(
                _unprocessed_in_sweep(src, sweep, "1")
            )
        ),
        {
            **_sweep_params(sweep.start, sweep.end, marker),
            "source_type": source_type,
            "sweep_rows": sweep_rows,
        },
    ).scalar_one()
    late_rows = conn.execute(
        composed(
            "SELECT count(*) FROM (SELECT 1 FROM {table} p"
            " WHERE (({marker} > :marker - :lookback AND {marker} <= :marker) OR {marker} IS NULL)"
            " AND {not_processed} LIMIT 1000) x",
            table=Identifier(src.table_name),
            marker=Identifier("p", src.marker_column),
            not_processed=_not_processed(src),
        ),
        {"marker": marker, "lookback": lookback, "source_type": source_type},
    ).scalar_one()
    due_retries = conn.execute(
        sa.text(
            "SELECT count(DISTINCT source_id), COALESCE(sum(attempts), 0) FROM processing_failures"
            " WHERE source_type = :source_type AND resolved_at IS NULL AND retryable"
            " AND attempts < :retry_limit"
            " AND last_attempt_at <= now() - make_interval(secs => :retry_interval)"
        ),
        {"source_type": source_type, "retry_limit": retry_limit, "retry_interval": retry_interval},
    ).one()
    return Backlog(
        marker,
        None if next_to is None else int(next_to),
        None if next_from is None else int(next_from),
        int(late_rows) + int(swept),
        int(due_retries[0]),
        f"{due_retries[0]}x{due_retries[1]}",
        sweep,
        int(swept),
        int(next_rows),
    )


def _trimmed(ids: list[str]) -> list[str]:
    """R4: lookup keys compare trimmed, like the trimmed columns they are matched against."""
    return [trim_id(str(i)) for i in ids]


# R4: every identifier column below is compared and returned trimmed; each comparison is the
# exact expression an index of logs 0002 / jobmanager 0003 holds.
_TRIMMED = {
    "imposition": trimmed(Identifier("imposition_id")),
    "file": trimmed(Identifier("file_id")),
    "runlist": trimmed(Identifier("runlist_id")),
    "print_name": trimmed(Identifier("name")),
}


def load_mapping_for_impositions(conn: sa.Connection, imposition_ids: list[str]) -> pd.DataFrame:
    """imposition_file_mapping rows of these impositions (logs), ids trimmed (R4)."""
    return pd.read_sql(
        composed(
            "SELECT DISTINCT {imposition} AS imposition_id, {file} AS file_id"
            " FROM imposition_file_mapping WHERE {imposition} = ANY(:ids)",
            **_TRIMMED,
        ),
        conn,
        params={"ids": _trimmed(imposition_ids)},
        dtype={"imposition_id": "string", "file_id": "string"},
    )


# sa.text treats ":x" as a bind parameter; the regex's "(?:" must reach Postgres unchanged.
_FILE_JOB_TEXT = FILE_JOB_SQL.replace(":", "\\:")


def load_files_of_jobs(conn: sa.Connection, job_ids: list[str]) -> pd.DataFrame:
    """Every mapping row whose file id names one of these jobs, any version, any imposition (R9);
    ids trimmed (R4).

    Always through the expression index: the planner prices the regex like one comparison, so
    once a window's jobs hold a tenth of the table it scans the whole mapping instead, running
    the regex on every row (~7 µs each: 310 ms per window on a 40,000-row mapping, growing with
    the shop, against 46 ms through the index; bench/README.md). SET LOCAL: this transaction only.
    """
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    files = pd.read_sql(
        composed(
            "SELECT DISTINCT {imposition} AS imposition_id, {file} AS file_id"
            " FROM imposition_file_mapping WHERE {file_job} = ANY(:ids)",
            **_TRIMMED,
            file_job=expression(_FILE_JOB_TEXT),  # indexed by the migrations
        ),
        conn,
        params={"ids": list(job_ids)},
        dtype={"imposition_id": "string", "file_id": "string"},
    )
    conn.exec_driver_sql("SET LOCAL enable_seqscan = on")
    return files


def load_versions_of_jobs(conn: sa.Connection, job_ids: list[str], customer: str) -> pd.DataFrame:
    """(job_id, version_tag) of every version of these jobs that has a file in the mapping (R9,
    R12: the highest of them is the job's version)."""
    if not job_ids:
        return pd.DataFrame(
            {"job_id": pd.Series(dtype="string"), "version_tag": pd.Series(dtype="string")}
        )
    files = job_file_rows(load_files_of_jobs(conn, job_ids), job_ids, customer)
    return files[["job_id", "version_tag"]].drop_duplicates().reset_index(drop=True)


def load_print_history(
    conn: sa.Connection, imposition_ids: list[str], source_ids: list[int]
) -> pd.DataFrame:
    """Print events of these impositions that are processed already or are this run's own rows
    (R11's whole history, R22a: the state is a function of the rows processed so far, so a
    re-run of a low window still counts the rows processed above it, and a row committed late
    below the marker counts once it is processed). Names compare trimmed (R4): an event of
    'IMP-J ' is history of 'IMP-J'."""
    return pd.read_sql(
        composed(
            "SELECT p.id AS source_id, {print_name} AS imposition_id, p.status, p.marker,"
            " {event_time} AS event_time"
            " FROM {table} p WHERE {print_name} = ANY(:ids)"
            " AND (p.id = ANY(:own) OR EXISTS (SELECT 1 FROM processed_source_rows r"
            "      WHERE r.source_type = :source_type AND r.source_id = p.id))",
            **_TRIMMED,
            event_time=expression(event_time_sql(PRINT_OS_SOURCE)),
            table=Identifier(PRINT_OS_SOURCE.table_name),
        ),
        conn,
        params={
            "ids": _trimmed(imposition_ids),
            "own": [int(i) for i in source_ids],
            "source_type": PRINT_OS,
        },
        dtype={"imposition_id": "string", "status": "string"},
    )


def load_operation_codes(conn: sa.Connection) -> pd.DataFrame:
    """operation name → operation_id (R8), one row per name normalised like scanned names (R7):
    the shop's row 'Die Cut' matches a scan of "die-cut". operation_id trimmed (R4), NA where
    the shop has not assigned one."""
    return normalise_operation_codes(
        pd.read_sql(
            sa.text("SELECT operation, operation_id FROM operation_codes"),
            conn,
            dtype={"operation": "string", "operation_id": "string"},
        )
    )


def _planner_paths(conn: sa.Connection, key: str, ids: list[str]) -> pd.DataFrame:
    """production_planner_paths rows (runlist_id, imposition_id), trimmed (R4), whose ``key``
    column is one of ``ids``: one query, whichever side is known."""
    return pd.read_sql(
        composed(
            "SELECT DISTINCT {runlist} AS runlist_id, {imposition} AS imposition_id"
            " FROM production_planner_paths WHERE {key} = ANY(:ids)",
            runlist=_TRIMMED["runlist"],
            imposition=_TRIMMED["imposition"],
            key=_TRIMMED[key],
        ),
        conn,
        params={"ids": _trimmed(ids)},
        dtype={"runlist_id": "string", "imposition_id": "string"},
    )


def load_runlist_paths(conn: sa.Connection, runlist_ids: list[str]) -> pd.DataFrame:
    """The impositions of these runlists."""
    return _planner_paths(conn, "runlist", runlist_ids)


def load_runlists_of_impositions(conn: sa.Connection, imposition_ids: list[str]) -> pd.DataFrame:
    """The runlists holding these impositions."""
    return _planner_paths(conn, "imposition", imposition_ids)


def load_print_rows(conn: sa.Connection, imposition_ids: list[str]) -> pd.DataFrame:
    """Every print row of these impositions, whatever its status (R6): (imposition_id, marker,
    complete_time); the scan's choice keeps those at or before its own time."""
    return pd.read_sql(
        composed(
            "SELECT {print_name} AS imposition_id, marker, {complete_time} AS complete_time"
            " FROM {table} WHERE {print_name} = ANY(:ids) AND marker IS NOT NULL",
            **_TRIMMED,
            complete_time=expression(
                f"COALESCE({finite_time('job_complete_time')}, {finite_time('created_at')})"
            ),
            table=Identifier(PRINT_OS_SOURCE.table_name),
        ),
        conn,
        params={"ids": _trimmed(imposition_ids)},
        dtype={"imposition_id": "string"},
    )


def load_attributed_versions(
    conn: sa.Connection, source_type: str, source_ids: list[int]
) -> pd.DataFrame:
    """The job versions these source rows are attributed to now (R22: a re-processed row
    recomputes what it reached before as well as what it reaches today)."""
    return pd.read_sql(
        sa.text(
            "SELECT DISTINCT job_id, version_tag FROM job_status_updates"
            " WHERE source_type = :t AND source_id = ANY(:ids) AND withdrawn_at IS NULL"
        ),
        conn,
        params={"t": source_type, "ids": list(source_ids)},
        dtype={"job_id": "string", "version_tag": "string"},
    )


def read_generation(conn: sa.Connection) -> int:
    """R24: the processing generation; every write moves it on."""
    return int(conn.execute(sa.text("SELECT generation FROM processing_generation")).scalar_one())


def _no_files() -> pd.DataFrame:
    return pd.DataFrame(
        {"imposition_id": pd.Series(dtype="string"), "file_id": pd.Series(dtype="string")}
    )


def load_print_references(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    rows: pd.DataFrame,
    processing_time: datetime,
    customer: str,
) -> PrintReferences:
    """Everything a window of print rows resolves against (core.resolution.resolve_prints):
    four queries, whatever the number of rows."""
    events, _ = validate_events(rows, processing_time)
    with jobmanager.connect() as conn:
        before = load_attributed_versions(conn, PRINT_OS, rows["source_id"].tolist())
    with logs.connect() as conn:
        mapping = load_mapping_for_impositions(conn, events["imposition_id"].unique().tolist())
        event_files, _ = expand_to_files(events, mapping, customer)
        job_ids = print_job_ids(event_files, before)
        job_mapping = load_files_of_jobs(conn, job_ids) if job_ids else mapping.iloc[0:0]
    job_files = job_file_rows(job_mapping, job_ids, customer)
    with jobmanager.connect() as conn:
        history = load_print_history(
            conn, job_files["imposition_id"].unique().tolist(), rows["source_id"].tolist()
        )
    return PrintReferences(before, mapping, job_mapping, history)


def load_scan_references(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    rows: pd.DataFrame,
    processing_time: datetime,
    customer: str,
) -> ScanReferences:
    """Everything a window of scans resolves against (core.resolution.resolve_scans): at most
    seven queries, whatever the number of rows. The files of every runlist a scan may apply to
    are read at once, before R6 chooses among them."""
    scans = prepare_scans(rows, processing_time)
    codes = scans.loc[has_code(scans), "code_text"].unique().tolist()
    with logs.connect() as conn:
        operation_codes = load_operation_codes(conn)
        runlist_paths = load_runlist_paths(conn, codes)
        job_scans = job_scans_of(classify_scans(scans, runlist_paths))
        job_ids = job_scans["job_id"].unique().tolist()
        job_mapping = load_files_of_jobs(conn, job_ids) if job_ids else _no_files()
        holding = holding_impositions(job_scans, job_mapping, customer)
        imposition_runlists = load_runlists_of_impositions(
            conn, holding["imposition_id"].unique().tolist()
        )
        candidates = runlist_candidates(holding, imposition_runlists)
        candidate_paths = load_runlist_paths(conn, candidates["runlist_id"].unique().tolist())
        all_paths = pd.concat([runlist_paths, candidate_paths], ignore_index=True)
        mapping = load_mapping_for_impositions(conn, all_paths["imposition_id"].unique().tolist())
    ambiguous = ambiguous_runlists(candidates)
    print_rows = pd.DataFrame(
        {
            "imposition_id": pd.Series(dtype="string"),
            "marker": pd.Series(dtype="Int64"),
            "complete_time": pd.Series(dtype="datetime64[us]"),
        }
    )
    if ambiguous:
        impositions = all_paths.loc[all_paths["runlist_id"].isin(ambiguous), "imposition_id"]
        with jobmanager.connect() as conn:
            print_rows = load_print_rows(conn, impositions.unique().tolist())
    return ScanReferences(
        operation_codes,
        runlist_paths,
        job_mapping,
        imposition_runlists,
        candidate_paths,
        print_rows,
        mapping,
    )


def window_query(source_type: str) -> str:
    """The statement ``load_window`` runs for a source, with its bind parameters, to explain."""
    return _window_sql(source_named(source_type))
