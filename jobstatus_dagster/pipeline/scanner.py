"""The scanner job: load → resolve → compute → write (SPEC R5–R8, R14–R18, R20)."""

import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd

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
    load_max_print_markers,
    load_operation_codes,
    load_runlist_paths,
    load_runlists_of_impositions,
)
from jobstatus_dagster.pipeline.assets import PROCESSING_KEYS, processing_ins
from jobstatus_dagster.pipeline.ops import LoadedWindow, build_load_op, write_updates
from jobstatus_dagster.pipeline.partitions import WINDOW_PARTITIONS
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.retries import TRANSIENT_RETRY, transient_errors

load_scanner_window = build_load_op(SCANNER)


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


@dg.op(tags={"kind": "pandas"}, retry_policy=TRANSIENT_RETRY)
def resolve_scan_window(
    context: dg.OpExecutionContext,
    loaded: LoadedWindow,
    jobmanager: PostgresDatabase,
    logs: PostgresDatabase,
    processing: ProcessingSettings,
) -> ResolvedScanWindow:
    """Codes → runlist or job (R5, R6) → impositions → files → job versions; operations (R7)."""
    started = time.perf_counter()
    customer = processing.resolved().file_customer
    rows = loaded.rows
    scans = rows.assign(
        code_text=trim_ids(rows["code_text"]),  # R4/R5: as the SQL runlist lookup trims
        event_time=as_event_time(rows["event_time"], loaded.processing_time),
    )
    no_code = scans["code_text"].isna() | (scans["code_text"] == "")
    failures = [failure_rows(scans[no_code], SCANNER, "missing_code", "", "scan has no code_text")]
    scans = scans[~no_code].reset_index(drop=True)

    with transient_errors(loaded.window), logs.engine.connect() as conn:
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
    # R6: among several runlists, the one whose impositions printed last.
    ambiguous = candidates[candidates.duplicated("source_id", keep=False)]
    if not ambiguous.empty:
        paths = all_paths[all_paths["runlist_id"].isin(ambiguous["runlist_id"])]
        with transient_errors(loaded.window), jobmanager.engine.connect() as conn:
            markers = load_max_print_markers(conn, paths["imposition_id"].unique().tolist())
        runlist_marker = (
            paths.merge(markers, on="imposition_id", how="left")
            .groupby("runlist_id", as_index=False)["max_marker"]
            .max()
        )
        candidates = candidates.merge(runlist_marker, on="runlist_id", how="left")
    else:
        candidates = candidates.assign(max_marker=pd.NA)
    chosen = choose_runlists(candidates)
    runlist_scans = scans[scans["code_kind"] == "runlist"][["source_id", "runlist_id"]].assign(
        note=pd.NA
    )
    scan_runlists = pd.concat([runlist_scans, chosen], ignore_index=True)
    single_jobs = job_scans[~job_scans["source_id"].isin(chosen["source_id"])]

    paths = all_paths[all_paths["runlist_id"].isin(scan_runlists["runlist_id"])]
    with transient_errors(loaded.window), logs.engine.connect() as conn:
        mapping = load_mapping_for_impositions(conn, paths["imposition_id"].unique().tolist())
    runlist_files = paths.merge(mapping, on="imposition_id", how="left")

    valid = scans[scans["code_kind"] != "unrecognised"]
    operations, op_failures = scan_operations(valid, known)
    failures.append(op_failures)
    resolved = ResolvedScanWindow(
        window=loaded.window,
        scans=valid[["source_id", "marker", "code_text", "event_time", "machine_id"]],
        operations=operations,
        scan_runlists=scan_runlists,
        runlist_files=runlist_files,
        single_jobs=single_jobs,
        failures=pd.concat([f for f in failures if len(f)] or failures[:1], ignore_index=True),
        customer=customer,
        loaded=rows[["source_id", "marker", "kind"]],
    )
    context.add_output_metadata(
        {
            "scans": len(rows),
            "runlist_scans": int((scans["code_kind"] == "runlist").sum()),
            "job_scans": int((scans["code_kind"] == "job").sum()),
            "job_scans_widened_to_runlist": len(chosen),
            "unrecognised": len(unknown),
            "failures": len(resolved.failures),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    crash_point("after_resolve")
    return resolved


@dg.op(tags={"kind": "pandas"})
def compute_scan_updates(
    context: dg.OpExecutionContext, resolved: ResolvedScanWindow
) -> UpdatePlan:
    """Operation updates per scan, job version and imposition, with precedence (R15). Pure."""
    started = time.perf_counter()
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
    context.add_output_metadata(
        {**plan.summary(), "seconds": round(time.perf_counter() - started, 3)}
    )
    return plan


@dg.graph_asset(
    key=PROCESSING_KEYS[SCANNER],
    ins=processing_ins(SCANNER),
    partitions_def=WINDOW_PARTITIONS[SCANNER],
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
