"""The print-OS job: load → resolve → compute → write (SPEC R4, R9–R18, R20)."""

import time
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.plan import UpdatePlan
from jobstatus_dagster.core.print_status import compute_print_plan
from jobstatus_dagster.core.resolution import ResolvedPrintWindow, resolve_prints
from jobstatus_dagster.faults import crash_point
from jobstatus_dagster.io.sources import load_print_references
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


def resolve_print(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, customer: str
) -> ResolvedPrintWindow:
    """Impositions → file ids → job versions (R4, R9), the versions the rows reached before
    (R22), and the print history of them all (R11)."""
    with transient_errors(loaded.window):
        refs = load_print_references(
            jobmanager, logs, loaded.rows, loaded.processing_time, customer, loaded.horizon
        )
    return resolve_prints(loaded.window, loaded.rows, refs, loaded.processing_time, customer)


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
