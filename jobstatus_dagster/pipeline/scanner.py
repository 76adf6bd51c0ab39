"""The scanner job: load → resolve → compute → write (SPEC R5–R8, R14–R18, R20)."""

import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.identifiers import parse_file_ids, trim_ids
from jobstatus_dagster.core.plan import SCANNER, UpdatePlan, Window, failure_rows
from jobstatus_dagster.core.print_status import as_event_time
from jobstatus_dagster.core.scans import (
    choose_runlists,
    classify_codes,
    compute_scan_plan,
    scan_operations,
)
from jobstatus_dagster.faults import crash_point
from jobstatus_dagster.io.sources import (
    load_files_of_jobs,
    load_mapping_for_impositions,
    load_operation_codes,
    load_print_rows,
    load_runlist_paths,
    load_runlists_of_impositions,
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
from jobstatus_dagster.source import SCANNER_SOURCE

load_scanner_window = build_load_op(SCANNER_SOURCE)


@dataclass(frozen=True)
class ResolvedScanWindow:
    window: Window
    scans: pd.DataFrame
    operations: pd.DataFrame
    scan_runlists: pd.DataFrame
    runlist_files: pd.DataFrame
    single_jobs: pd.DataFrame
    failures: pd.DataFrame
    customer: str
    loaded: pd.DataFrame
    stats: dict[str, int]


def _runlist_scores(
    candidates: pd.DataFrame, scans: pd.DataFrame, paths: pd.DataFrame, prints: pd.DataFrame
) -> pd.DataFrame:
    """R6: per (scan, runlist) the highest print marker among the runlist's impositions' rows
    at or before the scan's time (NA: none), so the choice is a function of the data."""
    rows = (
        candidates.merge(scans[["source_id", "event_time"]], on="source_id")
        .merge(paths, on="runlist_id")
        .merge(prints, on="imposition_id")
    )
    rows = rows[pd.to_datetime(rows["complete_time"]) <= rows["event_time"]]
    best = rows.groupby(["source_id", "runlist_id"], as_index=False)["marker"].max()
    return candidates.merge(
        best.rename(columns={"marker": "max_marker"}), on=["source_id", "runlist_id"], how="left"
    )


def resolve_scan(
    loaded: LoadedWindow, jobmanager: sa.Engine, logs: sa.Engine, customer: str
) -> ResolvedScanWindow:
    """Codes → runlist or job (R5, R6) → impositions → files → job versions; operations (R7)."""
    rows = loaded.rows
    scans = rows.assign(
        code_text=trim_ids(rows["code_text"]),  # R4/R5: as the SQL runlist lookup trims
        event_time=as_event_time(rows["event_time"], loaded.processing_time),
    )
    no_code = scans["code_text"].isna() | (scans["code_text"] == "")
    failures = [failure_rows(scans[no_code], SCANNER, "missing_code", "", "scan has no code_text")]
    scans = scans[~no_code].reset_index(drop=True)

    with transient_errors(loaded.window), logs.connect() as conn:
        known = set(load_operation_codes(conn)["operation"].dropna())
        codes = scans["code_text"].unique().tolist()
        runlist_paths = load_runlist_paths(conn, codes)
        classes = classify_codes(scans["code_text"], set(runlist_paths["runlist_id"]))
        scans = pd.concat([scans, classes], axis=1)
        unknown = scans[scans["code_kind"] == "unrecognised"]
        failures.append(
            failure_rows(
                unknown,
                SCANNER,
                "unrecognised_code",
                unknown["code_text"],
                "code " + unknown["code_text"] + " is neither a runlist nor <job_id>_<version>",
            )
        )
        job_scans = scans[scans["code_kind"] == "job"][["source_id", "job_id", "version_tag"]]
        job_ids = job_scans["job_id"].unique().tolist()
        job_mapping = (
            load_files_of_jobs(conn, job_ids)
            if job_ids
            else pd.DataFrame(
                {"imposition_id": pd.Series(dtype="string"), "file_id": pd.Series(dtype="string")}
            )
        )
        parsed = parse_file_ids(job_mapping["file_id"], customer)
        job_impositions = job_mapping.assign(**parsed).dropna(subset=["job_id"])
        holding = job_scans.merge(job_impositions, on=["job_id", "version_tag"])
        candidate_paths = load_runlists_of_impositions(
            conn, holding["imposition_id"].unique().tolist()
        )
        candidates = holding.merge(candidate_paths, on="imposition_id")[
            ["source_id", "runlist_id"]
        ].drop_duplicates()
        candidate_runlists = candidates["runlist_id"].unique().tolist()
        all_paths = pd.concat(
            [runlist_paths, load_runlist_paths(conn, candidate_runlists)], ignore_index=True
        ).drop_duplicates()
    # R6: among several runlists, the one whose impositions printed last before the scan.
    ambiguous = candidates[candidates.duplicated("source_id", keep=False)]
    if not ambiguous.empty:
        paths = all_paths[all_paths["runlist_id"].isin(ambiguous["runlist_id"])]
        with transient_errors(loaded.window), jobmanager.connect() as conn:
            prints = load_print_rows(conn, paths["imposition_id"].unique().tolist())
        candidates = _runlist_scores(candidates, scans, paths, prints)
    else:
        candidates = candidates.assign(max_marker=pd.NA)
    chosen = choose_runlists(candidates)
    runlist_scans = scans[scans["code_kind"] == "runlist"][["source_id", "runlist_id"]].assign(
        note=pd.NA
    )
    scan_runlists = pd.concat([runlist_scans, chosen], ignore_index=True)
    single_jobs = job_scans[~job_scans["source_id"].isin(chosen["source_id"])]

    paths = all_paths[all_paths["runlist_id"].isin(scan_runlists["runlist_id"])]
    with transient_errors(loaded.window), logs.connect() as conn:
        mapping = load_mapping_for_impositions(conn, paths["imposition_id"].unique().tolist())
    runlist_files = paths.merge(mapping, on="imposition_id", how="left")

    valid = scans[scans["code_kind"] != "unrecognised"]
    operations, op_failures = scan_operations(valid, known)
    failures.append(op_failures)
    return ResolvedScanWindow(
        window=loaded.window,
        scans=valid[["source_id", "marker", "code_text", "event_time", "machine_id"]],
        operations=operations,
        scan_runlists=scan_runlists,
        runlist_files=runlist_files,
        single_jobs=single_jobs,
        failures=pd.concat([f for f in failures if len(f)] or failures[:1], ignore_index=True),
        customer=customer,
        loaded=rows[["source_id", "marker", "kind"]],
        stats={
            "scans": len(rows),
            "runlist_scans": int((scans["code_kind"] == "runlist").sum()),
            "job_scans": int((scans["code_kind"] == "job").sum()),
            "job_scans_widened_to_runlist": len(chosen),
            "unrecognised": len(unknown),
        },
    )


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


@dataclass(frozen=True)
class ScanWork:
    """What the resolve op hands to the compute op."""

    resolved: ResolvedScanWindow
    loaded: LoadedWindow
    jobmanager: sa.Engine
    logs: sa.Engine
    settings: Settings


@dg.op(tags={"kind": "pandas"}, retry_policy=TRANSIENT_RETRY)
def resolve_scan_window(
    context: dg.OpExecutionContext,
    loaded: LoadedWindow,
    jobmanager: PostgresDatabase,
    logs: PostgresDatabase,
    processing: ProcessingSettings,
) -> ScanWork:
    """Codes → runlist or job (R5, R6) → impositions → files → job versions; operations (R7)."""
    started = time.perf_counter()
    settings = processing.resolved()
    resolved = resolve_scan(loaded, jobmanager.engine, logs.engine, settings.file_customer)
    context.add_output_metadata(
        {
            **resolved.stats,
            "failures": len(resolved.failures),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    crash_point("after_resolve")
    return ScanWork(resolved, loaded, jobmanager.engine, logs.engine, settings)


@dg.op(tags={"kind": "pandas"})
def compute_scan_updates(context: dg.OpExecutionContext, work: ScanWork) -> UpdatePlan:
    """Operation attributions per scan, job version and imposition (R5–R8, R15). Pure."""
    started = time.perf_counter()
    plan = finish_scan_plan(work.resolved, work.loaded, work.jobmanager, work.logs, work.settings)
    context.add_output_metadata(
        {**plan.summary(), "seconds": round(time.perf_counter() - started, 3)}
    )
    return plan


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
