"""The print-OS job: load → resolve → compute → write (R4, R9–R18, R20)."""

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.plan import UpdatePlan
from jobstatus_dagster.core.print_status import compute_print_plan
from jobstatus_dagster.core.resolution import ResolvedPrintWindow, resolve_prints
from jobstatus_dagster.io.sources import load_print_references
from jobstatus_dagster.pipeline.assets import processing_ins
from jobstatus_dagster.pipeline.ops import (
    LoadedWindow,
    build_compute_op,
    build_load_op,
    build_resolve_op,
    can_replan,
    write_updates,
)
from jobstatus_dagster.pipeline.retries import transient_errors
from jobstatus_dagster.source import PRINT_OS_SOURCE

load_print_os_window = build_load_op(PRINT_OS_SOURCE)


def resolve_print(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, customer: str
) -> ResolvedPrintWindow:
    """Impositions → file ids → job versions (R4, R9), the versions the rows reached before
    (R22), and the print history of them all (R11)."""
    with transient_errors(loaded.window):
        refs = load_print_references(
            jobmanager, logs, loaded.rows, loaded.processing_time, customer
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


def _print_stats(resolved: ResolvedPrintWindow) -> dict:
    return {
        "valid_events": len(resolved.events),
        "impositions": int(resolved.events["imposition_id"].nunique()),
        "job_versions": len(resolved.event_files[["job_id", "version_tag"]].drop_duplicates()),
        "jobs": int(resolved.job_files["job_id"].nunique()),
        "history_events": len(resolved.history),
        "failures": len(resolved.failures),
    }


resolve_print_window = build_resolve_op(
    PRINT_OS_SOURCE.resolve_op_name,
    "Press events → impositions → files → job versions, and the print history of those jobs.",
    resolve_print,
    _print_stats,
)
compute_print_updates = build_compute_op(
    PRINT_OS_SOURCE.compute_op_name,
    "Printed, aborted and partial counts per job version, over all of its files.",
    finish_print_plan,
)


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
