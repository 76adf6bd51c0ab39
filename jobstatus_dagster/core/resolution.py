"""Source rows → the job versions and impositions they reach (R4, R5, R6, R9). Pure.

Each source has one loader in io/sources that reads what resolution needs, and asks the step
functions here which keys to look up next, so every query fetches what resolution reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from jobstatus_dagster.core.identifiers import parse_file_ids, trim_ids
from jobstatus_dagster.core.plan import SCANNER, Window, failure_rows, present_rows
from jobstatus_dagster.core.print_status import (
    as_event_time,
    expand_to_files,
    normalise_status,
    validate_events,
)
from jobstatus_dagster.core.scans import choose_runlists, classify_codes, scan_operations

# ----- print OS: impositions → file ids → job versions, and their print history -------------


@dataclass(frozen=True)
class PrintReferences:
    """What a window of print rows resolves against, as the loader read it."""

    reached_before: pd.DataFrame  # (job_id, version_tag) the rows were attributed to (R22)
    mapping: pd.DataFrame  # (imposition_id, file_id) of the rows' impositions
    job_mapping: pd.DataFrame  # (imposition_id, file_id) naming any version of the jobs (R9)
    history: pd.DataFrame  # processed print rows of those jobs' impositions and its own (R11, R22a)


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


def print_job_ids(event_files: pd.DataFrame, reached_before: pd.DataFrame) -> list[str]:
    """R9, R22: the jobs the rows reach now and those they reached before."""
    return sorted(set(event_files["job_id"]) | set(reached_before["job_id"]))


def job_file_rows(job_mapping: pd.DataFrame, job_ids: list[str], customer: str) -> pd.DataFrame:
    """(imposition_id, file_id, job_id, version_tag) of every file of these jobs (R4, R9)."""
    parsed = parse_file_ids(job_mapping["file_id"], customer)
    job_files = job_mapping.assign(**parsed).dropna(subset=["job_id"])
    return job_files[job_files["job_id"].isin(job_ids)].reset_index(drop=True)


def resolve_prints(
    window: Window,
    rows: pd.DataFrame,
    refs: PrintReferences,
    processing_time: datetime,
    customer: str,
) -> ResolvedPrintWindow:
    """Valid events, their files and job versions, every file of those jobs and the print
    history of them all (R9–R11); what cannot be used is a failure (R20)."""
    events, failures = validate_events(rows, processing_time)
    event_files, file_failures = expand_to_files(events, refs.mapping, customer)
    job_ids = print_job_ids(event_files, refs.reached_before)
    job_files = job_file_rows(refs.job_mapping, job_ids, customer)
    history = refs.history.assign(
        status=normalise_status(refs.history["status"]),
        event_time=as_event_time(refs.history["event_time"], processing_time),
    ).dropna(subset=["status", "marker"])
    return ResolvedPrintWindow(
        window=window,
        events=events,
        event_files=event_files,
        job_files=job_files[["job_id", "version_tag", "file_id", "imposition_id"]],
        history=history[["source_id", "imposition_id", "status", "marker", "event_time"]],
        failures=pd.concat([failures, file_failures], ignore_index=True),
        loaded=rows[["source_id", "marker", "kind"]],
        reached_before=sorted(set(refs.reached_before["job_id"])),
    )


# ----- scanner: codes → runlist or job → impositions → files --------------------------------


@dataclass(frozen=True)
class ScanReferences:
    """What a window of scans resolves against, as the loader read it."""

    operation_codes: pd.DataFrame  # operation names the shop knows (R8)
    runlist_paths: pd.DataFrame  # (runlist_id, imposition_id) of runlists scanned by code
    job_mapping: pd.DataFrame  # (imposition_id, file_id) naming the scanned jobs
    imposition_runlists: pd.DataFrame  # (runlist_id, imposition_id): runlists holding them
    candidate_paths: pd.DataFrame  # (runlist_id, imposition_id) of those runlists
    print_rows: pd.DataFrame  # (imposition_id, marker, complete_time) where R6 must choose
    mapping: pd.DataFrame  # (imposition_id, file_id) of every imposition of those runlists


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


def prepare_scans(rows: pd.DataFrame, processing_time: datetime) -> pd.DataFrame:
    """The present rows (R22b: a deleted row is only withdrawn), codes trimmed as the SQL
    runlist lookup trims them (R4, R5); event times (R14)."""
    rows = present_rows(rows)
    return rows.assign(
        code_text=trim_ids(rows["code_text"]),
        event_time=as_event_time(rows["event_time"], processing_time),
    )


def has_code(scans: pd.DataFrame) -> pd.Series:
    return ~(scans["code_text"].isna() | (scans["code_text"] == ""))


def classify_scans(scans: pd.DataFrame, runlist_paths: pd.DataFrame) -> pd.DataFrame:
    """R5: each scan with a code gets code_kind, runlist_id, job_id, version_tag."""
    coded = scans[has_code(scans)].reset_index(drop=True)
    classes = classify_codes(coded["code_text"], set(runlist_paths["runlist_id"]))
    return pd.concat([coded, classes], axis=1)


def job_scans_of(classified: pd.DataFrame) -> pd.DataFrame:
    return classified[classified["code_kind"] == "job"][["source_id", "job_id", "version_tag"]]


def holding_impositions(
    job_scans: pd.DataFrame, job_mapping: pd.DataFrame, customer: str
) -> pd.DataFrame:
    """(source_id, job_id, version_tag, imposition_id, file_id): the impositions holding each
    scanned job version (R4)."""
    parsed = parse_file_ids(job_mapping["file_id"], customer)
    job_impositions = job_mapping.assign(**parsed).dropna(subset=["job_id"])
    return job_scans.merge(job_impositions, on=["job_id", "version_tag"])


def runlist_candidates(holding: pd.DataFrame, imposition_runlists: pd.DataFrame) -> pd.DataFrame:
    """(source_id, runlist_id): R6, a job scan applies to the runlists holding its job."""
    return holding.merge(imposition_runlists, on="imposition_id")[
        ["source_id", "runlist_id"]
    ].drop_duplicates()


def ambiguous_runlists(candidates: pd.DataFrame) -> list[str]:
    """Runlists of scans with more than one candidate: R6 chooses by their print rows."""
    several = candidates[candidates.duplicated("source_id", keep=False)]
    return several["runlist_id"].unique().tolist()


def runlist_scores(
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


def resolve_scans(
    window: Window,
    rows: pd.DataFrame,
    refs: ScanReferences,
    processing_time: datetime,
    customer: str,
) -> ResolvedScanWindow:
    """Codes → runlist or job (R5, R6) → impositions → files → job versions; operations (R7)."""
    scans = prepare_scans(rows, processing_time)
    no_code = scans[~has_code(scans)]
    failures = [failure_rows(no_code, SCANNER, "missing_code", "", "scan has no code_text")]
    scans = classify_scans(scans, refs.runlist_paths)
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
    job_scans = job_scans_of(scans)
    holding = holding_impositions(job_scans, refs.job_mapping, customer)
    candidates = runlist_candidates(holding, refs.imposition_runlists)
    all_paths = pd.concat(
        [refs.runlist_paths, refs.candidate_paths], ignore_index=True
    ).drop_duplicates()
    # R6: among several runlists, the one whose impositions printed last before the scan.
    ambiguous = ambiguous_runlists(candidates)
    if ambiguous:
        paths = all_paths[all_paths["runlist_id"].isin(ambiguous)]
        candidates = runlist_scores(candidates, scans, paths, refs.print_rows)
    else:
        candidates = candidates.assign(max_marker=pd.NA)
    chosen = choose_runlists(candidates)
    runlist_scans = scans[scans["code_kind"] == "runlist"][["source_id", "runlist_id"]].assign(
        note=pd.NA
    )
    scan_runlists = pd.concat([runlist_scans, chosen], ignore_index=True)
    single_jobs = job_scans[~job_scans["source_id"].isin(chosen["source_id"])]

    paths = all_paths[all_paths["runlist_id"].isin(scan_runlists["runlist_id"])]
    runlist_files = paths.merge(refs.mapping, on="imposition_id", how="left")

    valid = scans[scans["code_kind"] != "unrecognised"]
    known = set(refs.operation_codes["operation"].dropna())
    operations, op_failures = scan_operations(valid, known)
    failures.append(op_failures)
    return ResolvedScanWindow(
        window=window,
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
