"""The print-OS job: load → resolve → compute → write (SPEC R4, R9–R18, R20)."""

import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.identifiers import parse_file_ids
from jobstatus_dagster.core.plan import PRINT_OS, UpdatePlan, Window
from jobstatus_dagster.core.print_status import (
    as_event_time,
    compute_print_plan,
    expand_to_files,
    normalise_status,
    validate_events,
)
from jobstatus_dagster.faults import crash_point
from jobstatus_dagster.io.sources import (
    load_attributed_versions,
    load_files_of_jobs,
    load_mapping_for_impositions,
    load_print_history,
)
from jobstatus_dagster.pipeline.assets import processing_ins
from jobstatus_dagster.pipeline.ops import (
    LoadedWindow,
    build_load_op,
    can_replan,
    write_updates,
)
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.retries import TRANSIENT_RETRY, transient_errors
from jobstatus_dagster.source import PRINT_OS_SOURCE

load_print_os_window = build_load_op(PRINT_OS_SOURCE)


@dataclass(frozen=True)
class ResolvedPrintWindow:
    window: Window
    events: pd.DataFrame
    event_files: pd.DataFrame
    job_files: pd.DataFrame
    history: pd.DataFrame
    failures: pd.DataFrame
    loaded: pd.DataFrame
    reached_before: list[str]  # jobs the rows were attributed to before (R22)


def resolve_print(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, customer: str
) -> ResolvedPrintWindow:
    """Impositions → file ids → job versions (R4, R9), the versions the rows reached before
    (R22), and the print history of them all (R11)."""
    events, failures = validate_events(loaded.rows, loaded.processing_time)
    with transient_errors(loaded.window), jobmanager.connect() as conn:
        before = load_attributed_versions(conn, PRINT_OS, loaded.rows["source_id"].tolist())
    with transient_errors(loaded.window), logs.connect() as conn:
        mapping = load_mapping_for_impositions(conn, events["imposition_id"].unique().tolist())
        event_files, file_failures = expand_to_files(events, mapping, customer)
        job_ids = sorted(set(event_files["job_id"]) | set(before["job_id"]))
        job_mapping = load_files_of_jobs(conn, job_ids) if job_ids else mapping.iloc[0:0]
    parsed = parse_file_ids(job_mapping["file_id"], customer)
    job_files = job_mapping.assign(**parsed).dropna(subset=["job_id"])
    job_files = job_files[job_files["job_id"].isin(job_ids)].reset_index(drop=True)
    with transient_errors(loaded.window), jobmanager.connect() as conn:
        history = load_print_history(
            conn, job_files["imposition_id"].unique().tolist(), loaded.horizon
        )
    history = history.assign(
        status=normalise_status(history["status"]),
        event_time=as_event_time(history["event_time"], loaded.processing_time),
    ).dropna(subset=["status", "marker"])
    return ResolvedPrintWindow(
        window=loaded.window,
        events=events,
        event_files=event_files,
        job_files=job_files[["job_id", "version_tag", "file_id", "imposition_id"]],
        history=history[["source_id", "imposition_id", "status", "marker", "event_time"]],
        failures=pd.concat([failures, file_failures], ignore_index=True),
        loaded=loaded.rows[["source_id", "marker", "kind"]],
        reached_before=sorted(set(before["job_id"])),
    )


def plan_print(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, settings: Settings
) -> UpdatePlan:
    """Resolve and compute one loaded window; the plan can make itself again (R24)."""
    resolved = resolve_print(loaded, jobmanager, logs, settings.file_customer)
    return finish_print_plan(resolved, loaded, jobmanager, logs, settings)


def finish_print_plan(
    resolved: ResolvedPrintWindow,
    loaded: LoadedWindow,
    jobmanager: sa.Engine,
    logs: sa.Engine,
    settings: Settings,
) -> UpdatePlan:
    plan = compute_print_plan(
        resolved.window,
        resolved.events,
        resolved.event_files,
        resolved.job_files,
        resolved.history,
        resolved.failures,
        resolved.loaded,
    )
    # A job the rows reached before is recomputed even with no file left (R22b: withdrawn).
    plan.print_jobs = sorted(set(plan.print_jobs) | set(resolved.reached_before))
    return can_replan(plan, loaded, jobmanager, logs, settings, plan_print)


@dataclass(frozen=True)
class PrintWork:
    """What the resolve op hands to the compute op."""

    resolved: ResolvedPrintWindow
    loaded: LoadedWindow
    jobmanager: sa.Engine
    logs: sa.Engine
    settings: Settings


@dg.op(tags={"kind": "pandas"}, retry_policy=TRANSIENT_RETRY)
def resolve_print_window(
    context: dg.OpExecutionContext,
    loaded: LoadedWindow,
    jobmanager: PostgresDatabase,
    logs: PostgresDatabase,
    processing: ProcessingSettings,
) -> PrintWork:
    """Impositions → file ids → job versions (R4, R9), and the print history they need (R11)."""
    started = time.perf_counter()
    settings = processing.resolved()
    resolved = resolve_print(loaded, jobmanager.engine, logs.engine, settings.file_customer)
    context.add_output_metadata(
        {
            "valid_events": len(resolved.events),
            "impositions": int(resolved.events["imposition_id"].nunique()),
            "job_versions": len(resolved.event_files[["job_id", "version_tag"]].drop_duplicates()),
            "jobs": int(resolved.job_files["job_id"].nunique()),
            "history_events": len(resolved.history),
            "failures": len(resolved.failures),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    crash_point("after_resolve")
    return PrintWork(resolved, loaded, jobmanager.engine, logs.engine, settings)


@dg.op(tags={"kind": "pandas"})
def compute_print_updates(context: dg.OpExecutionContext, work: PrintWork) -> UpdatePlan:
    """Per-job-version printed/aborted/partial counts over all files (R10–R13). Pure."""
    started = time.perf_counter()
    plan = finish_print_plan(work.resolved, work.loaded, work.jobmanager, work.logs, work.settings)
    context.add_output_metadata(
        {**plan.summary(), "seconds": round(time.perf_counter() - started, 3)}
    )
    return plan


@dg.graph_asset(
    key=PRINT_OS_SOURCE.processing_key,
    ins=processing_ins(PRINT_OS_SOURCE),
    partitions_def=PRINT_OS_SOURCE.partitions,
    group_name="processing",
    kinds={"pandas", "postgres"},
    description='One window of "print OS" rows → imposition and job-version print status.',
)
def print_os_processing(print_os, imposition_file_mapping, operation_codes):
    loaded = load_print_os_window(sources=[print_os, imposition_file_mapping, operation_codes])
    return write_updates(compute_print_updates(resolve_print_window(loaded)))
