"""Loading windows of source rows and the reference data they resolve against.

Every function here is a fixed number of set-based queries, whatever the number of rows.
Identifiers come from the constant ``Source`` descriptions (jobstatus_dagster.source); values
are always bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import pandas as pd
import sqlalchemy as sa

from jobstatus_dagster.core.identifiers import (
    FILE_JOB_SQL,
    normalise_operation_codes,
    trim_id,
    trimmed_sql,
)
from jobstatus_dagster.core.plan import Position, Sweep, Window
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


def _window_sql(src: Source) -> str:
    """Window rows, late rows (R19), marker-less rows and rows of retryable failures (R20)."""
    not_processed = (
        "NOT EXISTS (SELECT 1 FROM processed_source_rows r"  # noqa: S608 - constant identifiers
        f" WHERE r.source_type = :source_type AND r.source_id = p.{src.id_column})"
    )
    return f"""
    SELECT * FROM (
        SELECT {select_list(src)}, 'window' AS kind FROM {src.table} p
        WHERE p.{src.marker_column} > :from_marker AND p.{src.marker_column} <= :to_marker
    ) w
    UNION ALL
    SELECT * FROM (
        SELECT {select_list(src)}, 'late' AS kind FROM {src.table} p
        WHERE p.{src.marker_column} > :from_marker - :lookback
          AND p.{src.marker_column} <= :from_marker AND {not_processed}
        ORDER BY p.{src.marker_column} LIMIT :late_limit
    ) l
    UNION ALL
    SELECT * FROM (
        SELECT {select_list(src)}, 'late' AS kind FROM {src.table} p
        WHERE p.{src.marker_column} IS NULL AND {not_processed}
        ORDER BY p.{src.id_column} LIMIT :late_limit
    ) n
    UNION ALL
    SELECT * FROM (
        SELECT {select_list(src)}, 'retry' AS kind FROM {src.table} p
        WHERE p.{src.id_column} IN (
            SELECT f.source_id FROM processing_failures f
            WHERE f.source_type = :source_type AND f.resolved_at IS NULL AND f.retryable
              AND f.attempts < :retry_limit
              AND f.last_attempt_at <= now() - make_interval(secs => :retry_interval)
            GROUP BY f.source_id ORDER BY min(f.last_attempt_at) LIMIT :retry_batch)
    ) r
    """  # noqa: S608 - identifiers are constants of the Source


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
    rows["source_id"] = rows["source_id"].astype("int64")
    rows["marker"] = rows["marker"].astype("Int64")
    return rows.drop_duplicates("source_id", keep="first").reset_index(drop=True)


def _position_after(src: Source, param: str) -> str:
    """Rows after a (marker, id) position in marker order; index-backed either way."""
    if src.id_column == src.marker_column:
        return f"p.{src.marker_column} > :{param}_marker"
    return f"(p.{src.marker_column}, p.{src.id_column}) > (:{param}_marker, :{param}_id)"


def _sweep_filter(src: Source, start: Position | None, end: Position | None) -> str:
    """The slice (start, end] of rows at or below :upper in marker order."""
    parts = [f"p.{src.marker_column} <= :upper"]
    if start is not None:
        parts.append(_position_after(src, "start"))
    if end is not None:
        parts.append(f"NOT ({_position_after(src, 'end')})")
    return " AND ".join(parts)


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
    m, i = src.marker_column, src.id_column
    last = conn.execute(
        sa.text(
            f"SELECT p.{m}, p.{i} FROM {src.table} p"  # noqa: S608 - constant identifiers
            f" WHERE {_sweep_filter(src, start, None)}"
            f" ORDER BY p.{m}, p.{i} OFFSET :skip LIMIT 1"
        ),
        {**_sweep_params(start, None, upper), "skip": rows - 1},
    ).one_or_none()
    return Sweep(start, None if last is None else (int(last[0]), int(last[1])))


def _unprocessed_in_sweep(src: Source, sweep: Sweep, select: str) -> str:
    """The LIMIT tells the planner the slice is small: index probes into processed_source_rows,
    never a hash of the whole history."""
    m, i = src.marker_column, src.id_column
    return (
        f"SELECT {select} FROM (SELECT * FROM {src.table} p"  # noqa: S608 - constants
        f" WHERE {_sweep_filter(src, sweep.start, sweep.end)}"
        f" ORDER BY p.{m}, p.{i} LIMIT :sweep_rows) p"
        " WHERE NOT EXISTS (SELECT 1 FROM processed_source_rows r"
        f"   WHERE r.source_type = :source_type AND r.source_id = p.{i})"
    )


def load_sweep(
    conn: sa.Connection, source_type: str, sweep: Sweep, upper: int, rows: int
) -> pd.DataFrame:
    """R19 for any marker: rows of the sweep's slice that were never processed (kind 'late'),
    e.g. rows committed with a marker far below the marker, or negative."""
    src = source_named(source_type)
    found = pd.read_sql(
        sa.text(_unprocessed_in_sweep(src, sweep, f"{select_list(src)}, 'late' AS kind")),
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


def marker_bounds(conn: sa.Connection, source_type: str) -> tuple[int | None, int | None]:
    """Lowest and highest marker present in the source table."""
    src = source_named(source_type)
    m = src.marker_column
    lowest, highest = conn.execute(sa.text(f"SELECT min({m}), max({m}) FROM {src.table}")).one()
    return (None if lowest is None else int(lowest), None if highest is None else int(highest))


def next_chunk(
    conn: sa.Connection, source_type: str, after: int, up_to: int, chunk_size: int
) -> tuple[int, int] | None:
    """First and last marker of the next ``chunk_size`` rows in (after, up_to], or None."""
    src = source_named(source_type)
    m = src.marker_column
    first, last = conn.execute(
        sa.text(
            f"SELECT min({m}), max({m}) FROM (SELECT {m} FROM {src.table}"
            f" WHERE {m} > :lo AND {m} <= :hi ORDER BY {m} LIMIT :chunk) w"
        ),
        {"lo": after, "hi": up_to, "chunk": chunk_size},
    ).one()
    return None if first is None else (int(first), int(last))


def chunk_reader(
    engine: sa.Engine, source_type: str, chunk_size: int
) -> Callable[[int, int], tuple[int, int] | None]:
    """``next_chunk`` on a fresh connection per call, for planning backfill windows."""

    def read(after: int, up_to: int) -> tuple[int, int] | None:
        with engine.connect() as conn:
            return next_chunk(conn, source_type, after, up_to, chunk_size)

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


def inspect_backlog(
    conn: sa.Connection,
    source_type: str,
    *,
    chunk_size: int,
    lookback: int,
    retry_limit: int,
    retry_interval: int,
    sweep_rows: int,
    sweep_after: Position | None | StoredSweep = StoredSweep.POSITION,
) -> Backlog:
    """Reads only. The history slice looked at starts after ``sweep_after``: by default where
    the runs' sweep stands (R19), or where a sensor's own look has reached."""
    src = source_named(source_type)
    marker = read_marker(conn, source_type)
    m = src.marker_column
    next_from, next_to, next_rows = conn.execute(
        sa.text(
            f"SELECT min({m}), max({m}), count(*) FROM (SELECT {m} FROM {src.table}"  # noqa: S608
            f" WHERE {m} > :marker ORDER BY {m} LIMIT :chunk) w"
        ),
        {"marker": marker, "chunk": chunk_size},
    ).one()
    if isinstance(sweep_after, StoredSweep):
        sweep = next_sweep(conn, source_type, marker, sweep_rows)
    else:
        sweep = sweep_slice(conn, source_type, sweep_after, marker, sweep_rows)
    swept = conn.execute(
        sa.text(f"SELECT count(*) FROM ({_unprocessed_in_sweep(src, sweep, '1')} LIMIT 1000) x"),
        {
            **_sweep_params(sweep.start, sweep.end, marker),
            "source_type": source_type,
            "sweep_rows": sweep_rows,
        },
    ).scalar_one()
    late_rows = conn.execute(
        sa.text(
            f"SELECT count(*) FROM (SELECT 1 FROM {src.table} p"  # noqa: S608
            f" WHERE ((p.{m} > :marker - :lookback AND p.{m} <= :marker) OR p.{m} IS NULL)"
            " AND NOT EXISTS (SELECT 1 FROM processed_source_rows r"
            f"   WHERE r.source_type = :source_type AND r.source_id = p.{src.id_column})"
            " LIMIT 1000) x"
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
_IMPOSITION = trimmed_sql("imposition_id")
_FILE = trimmed_sql("file_id")
_RUNLIST = trimmed_sql("runlist_id")
_PRINT_NAME = trimmed_sql("name")


def load_mapping_for_impositions(conn: sa.Connection, imposition_ids: list[str]) -> pd.DataFrame:
    """imposition_file_mapping rows of these impositions (logs), ids trimmed (R4)."""
    return pd.read_sql(
        sa.text(
            f"SELECT DISTINCT {_IMPOSITION} AS imposition_id, {_FILE} AS file_id"
            f" FROM imposition_file_mapping WHERE {_IMPOSITION} = ANY(:ids)"
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
        sa.text(
            f"SELECT DISTINCT {_IMPOSITION} AS imposition_id, {_FILE} AS file_id"
            f" FROM imposition_file_mapping WHERE {_FILE_JOB_TEXT} = ANY(:ids)"
        ),  # constant expressions, indexed by the migrations
        conn,
        params={"ids": list(job_ids)},
        dtype={"imposition_id": "string", "file_id": "string"},
    )
    conn.exec_driver_sql("SET LOCAL enable_seqscan = on")
    return files


def load_print_history(
    conn: sa.Connection, imposition_ids: list[str], horizon: int
) -> pd.DataFrame:
    """Print events of these impositions with marker ≤ horizon (R11's whole history). Names
    compare trimmed (R4): an event of 'IMP-J ' is history of 'IMP-J'."""
    return pd.read_sql(
        sa.text(
            f"SELECT p.id AS source_id, {_PRINT_NAME} AS imposition_id, p.status, p.marker,"
            f" {event_time_sql(PRINT_OS_SOURCE)} AS event_time"
            f' FROM "print OS" p WHERE {_PRINT_NAME} = ANY(:ids) AND p.marker <= :horizon'
        ),
        conn,
        params={"ids": _trimmed(imposition_ids), "horizon": horizon},
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


def load_runlist_paths(conn: sa.Connection, runlist_ids: list[str]) -> pd.DataFrame:
    """production_planner_paths rows of these runlists: (runlist_id, imposition_id), trimmed (R4)."""
    return pd.read_sql(
        sa.text(
            f"SELECT DISTINCT {_RUNLIST} AS runlist_id, {_IMPOSITION} AS imposition_id"
            f" FROM production_planner_paths WHERE {_RUNLIST} = ANY(:ids)"
        ),
        conn,
        params={"ids": _trimmed(runlist_ids)},
        dtype={"runlist_id": "string", "imposition_id": "string"},
    )


def load_runlists_of_impositions(conn: sa.Connection, imposition_ids: list[str]) -> pd.DataFrame:
    """The runlists holding these impositions: (runlist_id, imposition_id), trimmed (R4)."""
    return pd.read_sql(
        sa.text(
            f"SELECT DISTINCT {_RUNLIST} AS runlist_id, {_IMPOSITION} AS imposition_id"
            f" FROM production_planner_paths WHERE {_IMPOSITION} = ANY(:ids)"
        ),
        conn,
        params={"ids": _trimmed(imposition_ids)},
        dtype={"runlist_id": "string", "imposition_id": "string"},
    )


def load_print_rows(conn: sa.Connection, imposition_ids: list[str]) -> pd.DataFrame:
    """Every print row of these impositions, whatever its status (R6): (imposition_id, marker,
    complete_time); the scan's choice keeps those at or before its own time."""
    return pd.read_sql(
        sa.text(
            f"SELECT {_PRINT_NAME} AS imposition_id, marker,"
            f" COALESCE({finite_time('job_complete_time')}, {finite_time('created_at')})"
            " AS complete_time"
            f' FROM "print OS" WHERE {_PRINT_NAME} = ANY(:ids) AND marker IS NOT NULL'
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
