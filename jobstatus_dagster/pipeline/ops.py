"""Ops shared by both sources: load a window, write an UpdatePlan. Thin: I/O and metadata."""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.plan import Position, Sweep, UpdatePlan, Window
from jobstatus_dagster.faults import crash_point
from jobstatus_dagster.io.sources import (
    load_sweep,
    load_window,
    next_sweep,
    read_generation,
    read_marker,
)
from jobstatus_dagster.io.writer import write_plan
from jobstatus_dagster.pipeline.partitions import key_bounds
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.retries import TRANSIENT_RETRY, transient_errors
from jobstatus_dagster.source import Source

SOURCE_TAG = "jobstatus/source"
WINDOW_TAG = "jobstatus/window"
TRIGGER_TAG = "jobstatus/trigger"
SWEEP_TAG = "jobstatus/sweep"


class SweepConfig(dg.Config):
    """A slice of the history the sensor found never-processed rows in: rows after
    ``after`` through ``through`` in (marker, id) order; None is the lowest / the window start."""

    after: list[int] | None = None
    through: list[int] | None = None

    def slice(self) -> Sweep:
        def position(value: list[int] | None) -> Position | None:
            return None if value is None else (int(value[0]), int(value[1]))

        return Sweep(position(self.after), position(self.through))


R = TypeVar("R")  # a source's resolved window


class WindowConfig(dg.Config):
    """The window (from_marker, to_marker] of source markers this run processes.

    Left unset (a backfill launched from the UI), the run's partition key gives the range.
    """

    from_marker: int | None = None
    to_marker: int | None = None
    sweep: SweepConfig | None = None  # unset: the slice after the stored sweep position


def resolve_window(source_type: str, config: WindowConfig, partition_key: str | None) -> Window:
    if config.from_marker is not None and config.to_marker is not None:
        window = Window(source_type, config.from_marker, config.to_marker)
    elif partition_key is not None:
        window = Window(source_type, *key_bounds(partition_key))
    else:
        raise dg.Failure(
            "no window: give from_marker and to_marker in the run config, or a partition",
            allow_retries=False,
        )
    if config.sweep is not None:
        window = replace(window, sweep=config.sweep.slice())
    if window.to_marker < window.from_marker:
        raise dg.Failure(f"empty window {window.label}", allow_retries=False)
    return window


@dataclass(frozen=True)
class LoadedWindow:
    window: Window
    rows: pd.DataFrame
    processing_time: datetime
    generation: int  # R24: read before anything else; the write re-plans if it moved on
    swept: int = 0
    marker: int = 0


def utc_now() -> datetime:
    """Naive UTC, matching the shop's TIMESTAMP columns."""
    return datetime.now(UTC).replace(tzinfo=None)


def load_window_rows(
    engine: sa.Engine, window: Window, settings: Settings, processing_time: datetime | None = None
) -> LoadedWindow:
    """Window rows, late rows committed out of order (R19) and due retries (R20). A window
    without a sweep slice takes the next one; a re-plan passes the slice it had."""
    source_type = window.source_type
    with transient_errors(window), engine.connect() as conn:
        generation = read_generation(conn)
        marker = read_marker(conn, source_type)
        rows = load_window(
            conn,
            window,
            lookback=settings.late_row_lookback,
            late_limit=settings.chunk_size,
            retry_limit=settings.retry_limit,
            retry_batch=settings.retry_batch,
            retry_interval=settings.retry_interval_seconds,
        )
        # R19 whatever the marker: a bounded slice of the history, never-processed rows.
        sweep = window.sweep or next_sweep(
            conn, source_type, window.from_marker, settings.sweep_rows
        )
        swept = load_sweep(conn, source_type, sweep, window.from_marker, settings.sweep_rows)
    if len(swept):
        rows = pd.concat([rows, swept], ignore_index=True)
        rows = rows.drop_duplicates("source_id", keep="first").reset_index(drop=True)
    return LoadedWindow(
        replace(window, sweep=sweep),
        rows,
        processing_time or utc_now(),
        generation,
        len(swept),
        marker,
    )


def can_replan(
    plan: UpdatePlan,
    loaded: LoadedWindow,
    jobmanager: sa.Engine,
    logs: sa.Engine,
    settings: Settings,
    planner: Callable[[LoadedWindow, sa.Engine, sa.Engine, Settings], UpdatePlan],
) -> UpdatePlan:
    """R24: the plan carries the generation it was read at and how to make itself again (the
    same window, sweep slice and processing time, reloaded), for the write to use under the
    lock if another write landed meanwhile."""
    plan.generation = loaded.generation
    plan.processing_time = loaded.processing_time
    plan.customer = settings.file_customer

    def replan() -> UpdatePlan:
        again = load_window_rows(jobmanager, loaded.window, settings, loaded.processing_time)
        return planner(again, jobmanager, logs, settings)

    plan.replan = replan
    return plan


def build_load_op(source: Source) -> dg.OpDefinition:
    @dg.op(
        name=source.load_op_name,
        ins={"sources": dg.In(dg.Nothing)},
        tags={"kind": "postgres"},
        retry_policy=TRANSIENT_RETRY,
        pool=source.name,  # dagster.yaml: one run of the source at a time, whoever launched it
    )
    def _load(
        context: dg.OpExecutionContext,
        config: WindowConfig,
        jobmanager: PostgresDatabase,
        processing: ProcessingSettings,
    ) -> LoadedWindow:
        """The window's rows, rows committed late below the marker, and failures due a retry."""
        # R19 (late rows, the sweep slice) and R20 (due retries).
        partition_key = context.partition_key if context.has_partition_key else None
        window = resolve_window(source.name, config, partition_key)
        started = time.perf_counter()
        loaded = load_window_rows(jobmanager.engine, window, processing.resolved())
        sweep = loaded.window.sweep
        kinds = loaded.rows["kind"].value_counts()
        context.add_output_metadata(
            {
                "window": window.label,
                "marker_at_start": loaded.marker,
                "generation": loaded.generation,
                "rows_read": len(loaded.rows),
                "window_rows": int(kinds.get("window", 0)),
                "late_rows": int(kinds.get("late", 0)),
                "retried_rows": int(kinds.get("retry", 0)),
                "swept_rows_found": loaded.swept,
                "sweep_slice": f"{sweep.start or 'lowest'} .. {sweep.end or 'window start'}",
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        crash_point("after_load")
        return loaded

    return _load


@dg.op(tags={"kind": "postgres"}, retry_policy=TRANSIENT_RETRY)
def write_updates(
    context: dg.OpExecutionContext,
    plan: UpdatePlan,
    jobmanager: PostgresDatabase,
    logs: PostgresDatabase,
) -> dict:
    """Write the plan: the logs database first, then the audit, failures and marker in one
    jobmanager transaction, so a crash in between is repaired by running again."""
    # R18: the order and the single jobmanager transaction are what make a re-run repair.
    return write_and_report(context, plan, jobmanager, logs)


def write_and_report(
    context: dg.OpExecutionContext,
    plan: UpdatePlan,
    jobmanager: PostgresDatabase,
    logs: PostgresDatabase,
) -> dict:
    started = time.perf_counter()
    with transient_errors(plan.window):
        report = write_plan(jobmanager.engine, logs.engine, plan, context.run_id)
    metadata = {
        "window": plan.window.label,
        **plan.summary(),
        **report.as_metadata(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if report.missing_rows:
        metadata["missing_rows_sample"] = ", ".join(report.missing_rows)
    context.add_output_metadata(metadata)
    # Lineage: every table this run wrote gets a materialization carrying the window and counts.
    for table, changed in report.tables_changed().items():
        context.log_event(
            dg.AssetMaterialization(
                asset_key=table,
                description=f"{plan.window.label}: {changed} rows changed",
                metadata={
                    "window": plan.window.label,
                    "rows_changed": changed,
                    "run_rows_read": metadata["rows_read"],
                    "failures": metadata["failures"],
                    "seconds": metadata["seconds"],
                },
            )
        )
    context.log.info(f"{plan.window.label}: {metadata}")
    return {k: v for k, v in metadata.items() if isinstance(v, int | float | str)}


@dataclass(frozen=True)
class ResolvedWork(Generic[R]):
    """What a resolve op hands to its compute op: the resolved window and how to plan it again
    (the loaded rows, the engines and the settings a re-plan needs)."""

    resolved: R
    loaded: LoadedWindow
    jobmanager: sa.Engine
    logs: sa.Engine
    settings: Settings


def build_resolve_op(
    name: str,
    description: str,
    resolve: Callable[[LoadedWindow, sa.Engine, sa.Engine, str], R],
    stats: Callable[[R], dict],
) -> dg.OpDefinition:
    """A source's resolve op: its io loader and pure resolution (``resolve``), and the figures
    (``stats``) the UI shows for it."""

    @dg.op(
        name=name, description=description, tags={"kind": "pandas"}, retry_policy=TRANSIENT_RETRY
    )
    def _resolve(
        context: dg.OpExecutionContext,
        loaded: LoadedWindow,
        jobmanager: PostgresDatabase,
        logs: PostgresDatabase,
        processing: ProcessingSettings,
    ) -> ResolvedWork:
        started = time.perf_counter()
        settings = processing.resolved()
        resolved = resolve(loaded, jobmanager.engine, logs.engine, settings.file_customer)
        context.add_output_metadata(
            {**stats(resolved), "seconds": round(time.perf_counter() - started, 3)}
        )
        crash_point("after_resolve")
        return ResolvedWork(resolved, loaded, jobmanager.engine, logs.engine, settings)

    return _resolve


def build_compute_op(
    name: str,
    description: str,
    finish: Callable[[R, LoadedWindow, sa.Engine, sa.Engine, Settings], UpdatePlan],
) -> dg.OpDefinition:
    """A source's compute op: the pure status computation over the resolved window."""

    @dg.op(name=name, description=description, tags={"kind": "pandas"})
    def _compute(context: dg.OpExecutionContext, work: ResolvedWork) -> UpdatePlan:
        started = time.perf_counter()
        plan = finish(work.resolved, work.loaded, work.jobmanager, work.logs, work.settings)
        context.add_output_metadata(
            {**plan.summary(), "seconds": round(time.perf_counter() - started, 3)}
        )
        return plan

    return _compute
