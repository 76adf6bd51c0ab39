"""Print-OS events → imposition and job-version print statuses (R9–R13). Pure pandas.

The state of a job version is recomputed from its whole print history (R11), so
re-processing, late rows and backfills all converge on the same state; the audit
row of each event carries the counts as they stood right after that event.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from jobstatus_dagster.core.identifiers import (
    FOREIGN,
    MALFORMED,
    classify_file_ids,
    foreign_file_failures,
    highest_versions,
    parse_file_ids,
    trim_ids,
)
from jobstatus_dagster.core.plan import (
    AUDIT_COLUMNS,
    FAILURE_COLUMNS,
    IMPOSITION_OP_COLUMNS,
    JOB_OP_COLUMNS,
    JOB_STATE_COLUMNS,
    PRINT,
    PRINT_OS,
    UpdatePlan,
    Window,
    failure_rows,
    keep_winners,
    precedence,
)

PRINTED, ABORTED = "PRINTED", "ABORTED"
IMPOSITION_STATUS = {PRINTED: "completed", ABORTED: "aborted"}  # R13
PRINT_PRECEDENCE = precedence(PRINT_OS, PRINT)


def normalise_status(raw: pd.Series) -> pd.Series:
    """R10: compared case-insensitively; anything but PRINTED/ABORTED becomes NA."""
    text = raw.astype("string").str.strip().str.upper()
    return text.where(text.isin([PRINTED, ABORTED]))


def as_event_time(values: pd.Series, processing_time: datetime) -> pd.Series:
    """R14: the event's own time; the processing time only where it is missing."""
    times = pd.to_datetime(values).astype("datetime64[us]")
    return times.fillna(pd.Timestamp(processing_time))


def print_status(printed: int, aborted: int, total: int) -> str | None:
    """R11 for one job version."""
    if total > 0 and printed == total:
        return "completed"
    if printed > 0:
        return "partial"
    if aborted > 0:
        return "aborted"
    return None


def count_note(printed: int, aborted: int, total: int) -> str:
    note = f"{printed} of {total} files printed"
    return f"{note}, {aborted} aborted" if aborted else note


def validate_events(
    events: pd.DataFrame, processing_time: datetime
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split loaded rows into usable events and recorded failures (R20).

    ``events`` has source_id, imposition_id, status, marker, event_time (R14: a missing
    event time falls back to the processing time).
    """
    raw_status = events["status"].astype("string").fillna("NULL")
    events = events.assign(
        imposition_id=trim_ids(events["imposition_id"]),  # R4: as the SQL lookups trim
        status=normalise_status(events["status"]),
        event_time=as_event_time(events["event_time"], processing_time),
    )
    no_imposition = events["imposition_id"].isna() | (events["imposition_id"] == "")
    no_marker = events["marker"].isna() & ~no_imposition
    bad_status = events["status"].isna() & ~no_imposition & ~no_marker

    def detail(mask: pd.Series, text: str | pd.Series) -> pd.Series:
        return pd.Series(text, index=events.index, dtype="string")[mask]

    failures = pd.concat(
        [
            failure_rows(
                events[no_imposition],
                PRINT_OS,
                "missing_imposition_id",
                "",
                detail(no_imposition, "print OS row has no name (imposition id)"),
            ),
            failure_rows(
                events[no_marker],
                PRINT_OS,
                "missing_marker",
                "",
                detail(no_marker, "print OS row has no marker"),
            ),
            failure_rows(
                events[bad_status],
                PRINT_OS,
                "unknown_status",
                raw_status[bad_status],
                detail(bad_status, "status " + raw_status + " is neither PRINTED nor ABORTED"),
            ),
        ],
        ignore_index=True,
    )
    valid = events[~(no_imposition | no_marker | bad_status)].reset_index(drop=True)
    return valid, failures


def expand_to_files(
    events: pd.DataFrame, mapping: pd.DataFrame, customer: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events × imposition_file_mapping → (source_id, imposition_id, file_id, job_id, version_tag).

    Unmapped impositions (retryable) and malformed file ids are failures per event; another
    customer's well-formed file id is not ours: skipped, recorded once per file id (R20).
    """
    joined = events[["source_id", "imposition_id"]].merge(mapping, on="imposition_id", how="left")
    unmapped = joined[joined["file_id"].isna()]
    mapped = joined[joined["file_id"].notna()].reset_index(drop=True)
    parsed = parse_file_ids(mapped["file_id"], customer)
    mapped = mapped.assign(job_id=parsed["job_id"], version_tag=parsed["version_tag"])
    kinds = classify_file_ids(mapped["file_id"], customer)
    bad = mapped[kinds == MALFORMED]
    failures = pd.concat(
        [
            failure_rows(
                unmapped,
                PRINT_OS,
                "unmapped_imposition",
                unmapped["imposition_id"],
                "imposition "
                + unmapped["imposition_id"]
                + " has no files in imposition_file_mapping",
            ),
            failure_rows(
                bad,
                PRINT_OS,
                "bad_file_id",
                bad["file_id"],
                "file id "
                + bad["file_id"]
                + " does not match FILE_<version>_"
                + customer
                + "_<job_id>[_<extra>]",
            ),
            foreign_file_failures(mapped.loc[kinds == FOREIGN, "file_id"], customer),
        ],
        ignore_index=True,
    )
    event_files = mapped[mapped["job_id"].notna()].drop_duplicates().reset_index(drop=True)
    return event_files, failures


def _file_first_events(job_files: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Per job-version file: the sequence number of its first PRINTED and first ABORTED event."""
    hits = job_files.merge(history[["imposition_id", "status", "seq"]], on="imposition_id")
    firsts = hits.pivot_table(
        index=["job_id", "version_tag", "file_id"], columns="status", values="seq", aggfunc="min"
    )
    files = job_files[["job_id", "version_tag", "file_id"]].drop_duplicates()
    files = files.merge(firsts.reset_index(), on=["job_id", "version_tag", "file_id"], how="left")
    for status in (PRINTED, ABORTED):
        if status not in files:
            files[status] = np.nan
    return files.rename(columns={PRINTED: "printed_seq", ABORTED: "aborted_seq"})


def _counts_at(points: pd.DataFrame, files: pd.DataFrame) -> pd.DataFrame:
    """R10/R11 counts of each job version at each evaluation point (a history sequence number)."""
    grid = points.merge(files, on=["job_id", "version_tag"])
    printed = grid["printed_seq"] <= grid["point_seq"]
    aborted = (grid["aborted_seq"] <= grid["point_seq"]) & ~printed
    grid = grid.assign(printed=printed.astype("int64"), aborted=aborted.astype("int64"), total=1)
    keys = [c for c in points.columns]
    counts = grid.groupby(keys, dropna=False)[["printed", "aborted", "total"]].sum().reset_index()
    counts["status"] = [
        print_status(p, a, t)
        for p, a, t in zip(counts["printed"], counts["aborted"], counts["total"], strict=True)
    ]
    counts["notes"] = [
        count_note(p, a, t)
        for p, a, t in zip(counts["printed"], counts["aborted"], counts["total"], strict=True)
    ]
    return counts


def compute_print_plan(
    window: Window,
    events: pd.DataFrame,
    event_files: pd.DataFrame,
    job_files: pd.DataFrame,
    history: pd.DataFrame,
    failures: pd.DataFrame,
    loaded: pd.DataFrame,
) -> UpdatePlan:
    """Everything to write for one window of print events.

    events: valid events of the window (source_id, imposition_id, status, marker, event_time, kind).
    event_files: their files (source_id, imposition_id, file_id, job_id, version_tag).
    job_files: every file of every version of the touched jobs (job_id, version_tag, file_id,
        imposition_id), over all impositions (R9).
    history: valid print events of those impositions up to the horizon (same columns as events).
    loaded: every row the run read (source_id, marker, kind), valid or not.
    """
    history = (
        pd.concat([history, events[history.columns]], ignore_index=True)
        .drop_duplicates("source_id")
        .sort_values(["marker", "source_id"], kind="stable")
        .reset_index(drop=True)
    )
    history["seq"] = np.arange(len(history), dtype="int64")
    events = events.merge(history[["source_id", "seq"]], on="source_id")

    plan = UpdatePlan(window=window)
    plan.failures = failures[FAILURE_COLUMNS].reset_index(drop=True)
    plan.processed = (
        loaded[["source_id", "marker", "kind"]].drop_duplicates("source_id").reset_index(drop=True)
    )

    # R13: each imposition's own print row takes its latest event's status.
    imposition_rows = events.assign(
        operation=PRINT,
        status=events["status"].map(IMPOSITION_STATUS),
        source_type=PRINT_OS,
        notes="PrintOS "
        + events["status"].str.lower()
        + " (marker "
        + events["marker"].astype("string")
        + ")",
        precedence=PRINT_PRECEDENCE,
        state_based=False,
    )
    plan.imposition_ops = keep_winners(
        imposition_rows[IMPOSITION_OP_COLUMNS], ["imposition_id", "operation"]
    )

    if event_files.empty:
        return plan

    files = _file_first_events(job_files, history)
    touched = event_files[["source_id", "job_id", "version_tag"]].drop_duplicates()
    touched = touched.merge(events[["source_id", "seq", "event_time", "kind"]], on="source_id")

    # Audit (R17): one row per (event, job version), counts as they stood right after the event.
    per_event = _counts_at(
        touched[["job_id", "version_tag", "source_id"]].assign(point_seq=touched["seq"]), files
    ).merge(
        touched[["source_id", "job_id", "version_tag", "event_time", "kind"]],
        on=["source_id", "job_id", "version_tag"],
    )

    # Current state of every version of every touched job: counts over the whole history (R11).
    versions = files[["job_id", "version_tag"]].drop_duplicates()
    version_hist = (
        job_files[["job_id", "version_tag", "imposition_id"]]
        .drop_duplicates()
        .merge(history[["imposition_id", "source_id", "event_time", "seq"]], on="imposition_id")
        .sort_values(["event_time", "seq"], kind="stable")
        .groupby(["job_id", "version_tag"])
        .tail(1)[["job_id", "version_tag", "source_id", "event_time"]]
    )
    current = _counts_at(versions.assign(point_seq=np.inf), files).drop(columns="point_seq")
    current = current.merge(version_hist, on=["job_id", "version_tag"], how="left")

    late = per_event["kind"].isin(["late", "retry"])
    newer = per_event.merge(
        current[["job_id", "version_tag", "source_id", "event_time"]],
        on=["job_id", "version_tag"],
        how="left",
        suffixes=("", "_latest"),
    )
    older = late & (newer["event_time_latest"] > newer["event_time"])
    notes = per_event["notes"].where(
        ~older,
        per_event["notes"]
        + "; late event older than print OS #"
        + newer["source_id_latest"].astype("string")
        + ": state recomputed from the whole history",
    )
    plan.audit = pd.DataFrame(
        {
            "source_type": PRINT_OS,
            "source_id": per_event["source_id"],
            "job_id": per_event["job_id"],
            "version_tag": per_event["version_tag"],
            "operation": PRINT,
            "status": per_event["status"],
            "printed_count": per_event["printed"],
            "aborted_count": per_event["aborted"],
            "total_count": per_event["total"],
            "notes": notes,
            "event_time": per_event["event_time"],
            "precedence": PRINT_PRECEDENCE,
            "state_based": True,
        }
    )[AUDIT_COLUMNS]

    # job_operations print rows of the versions this window touched (R11, R14).
    touched_versions = current.merge(
        touched[["job_id", "version_tag"]].drop_duplicates(), on=["job_id", "version_tag"]
    )
    touched_versions = touched_versions[touched_versions["status"].notna()]
    plan.job_ops = touched_versions.assign(
        operation=PRINT, source_type=PRINT_OS, precedence=PRINT_PRECEDENCE, state_based=True
    )[JOB_OP_COLUMNS].reset_index(drop=True)

    # jobs.operations.print (R12): true only when the job's highest version is completed.
    touched_jobs = touched[["job_id"]].drop_duplicates()
    highest = highest_versions(versions.merge(touched_jobs, on="job_id"))
    job_rows = highest.merge(current, on=["job_id", "version_tag"], how="left")
    job_latest = (
        current.dropna(subset=["event_time"])
        .sort_values(["event_time", "source_id"], kind="stable")
        .groupby("job_id")
        .tail(1)[["job_id", "source_id", "event_time"]]
    )
    job_rows = job_rows.drop(columns=["source_id", "event_time"]).merge(job_latest, on="job_id")
    value = job_rows["status"] == "completed"
    version_note = "version " + job_rows["version_tag"] + ": "
    job_rows = job_rows.assign(
        value=value.fillna(False).astype(bool),
        status=job_rows["status"].fillna("not_printed"),
        notes=(version_note + job_rows["notes"]).where(
            job_rows["status"].notna(), version_note + "not printed yet (" + job_rows["notes"] + ")"
        ),
        operation=PRINT,
        source_type=PRINT_OS,
        precedence=PRINT_PRECEDENCE,
        state_based=True,
    )
    plan.job_state = job_rows[JOB_STATE_COLUMNS].reset_index(drop=True)
    return plan
