"""The scanner job: load → resolve → compute → write (R5–R8, R14–R18, R20)."""

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.plan import UpdatePlan
from jobstatus_dagster.core.resolution import ResolvedScanWindow, resolve_scans
from jobstatus_dagster.core.scans import compute_scan_plan
from jobstatus_dagster.io.sources import load_scan_references
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
from jobstatus_dagster.source import SCANNER_SOURCE

load_scanner_window = build_load_op(SCANNER_SOURCE)


def resolve_scan(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, customer: str
) -> ResolvedScanWindow:
    """Codes → runlist or job (R5, R6) → impositions → files → job versions; operations (R7)."""
    with transient_errors(loaded.window):
        refs = load_scan_references(jobmanager, logs, loaded.rows, loaded.processing_time, customer)
    return resolve_scans(loaded.window, loaded.rows, refs, loaded.processing_time, customer)


def plan_scans(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, settings: Settings
) -> UpdatePlan:
    """Resolve and compute one loaded window; the plan can make itself again (R24)."""
    resolved = resolve_scan(loaded, jobmanager, logs, settings.file_customer)
    return finish_scan_plan(resolved, loaded, jobmanager, logs, settings)


def finish_scan_plan(
    resolved: ResolvedScanWindow,
    loaded: LoadedWindow,
    jobmanager: sa.Engine,
    logs: sa.Engine,
    settings: Settings,
) -> UpdatePlan:
    plan = compute_scan_plan(
        resolved.window,
        resolved.scans,
        resolved.operations,
        resolved.scan_runlists,
        resolved.runlist_files,
        resolved.single_jobs,
        resolved.failures,
        resolved.customer,
    )
    plan.processed = resolved.loaded  # every row read, including those that only failed (R20)
    return can_replan(plan, loaded, jobmanager, logs, settings, plan_scans)


def _scan_stats(resolved: ResolvedScanWindow) -> dict:
    return {**resolved.stats, "failures": len(resolved.failures)}


resolve_scan_window = build_resolve_op(
    SCANNER_SOURCE.resolve_op_name,
    "Scanned codes → runlist or job → impositions → files → job versions, and the operations"
    " each scan reports.",
    resolve_scan,
    _scan_stats,
)
compute_scan_updates = build_compute_op(
    SCANNER_SOURCE.compute_op_name,
    "Operation status per scan, job version and imposition.",
    finish_scan_plan,
)


@dg.graph_asset(
    key=SCANNER_SOURCE.processing_key,
    ins=processing_ins(SCANNER_SOURCE),
    partitions_def=SCANNER_SOURCE.partitions,
    group_name="processing",
    kinds={"pandas", "postgres"},
    description="One window of scanned_codes rows → operation status of jobs and impositions.",
)
def scanner_processing(
    scanned_codes, imposition_file_mapping, production_planner_paths, operation_codes, print_os
):
    loaded = load_scanner_window(
        sources=[
            scanned_codes,
            imposition_file_mapping,
            production_planner_paths,
            operation_codes,
            print_os,
        ]
    )
    return write_updates(compute_scan_updates(resolve_scan_window(loaded)))
