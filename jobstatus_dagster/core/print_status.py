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
    guard_plan_keys,
    highest_versions,
    parse_file_ids,
    trim_ids,
)
from jobstatus_dagster.core.plan import (
    ATTRIBUTION_COLUMNS,
    FAILURE_COLUMNS,
    IMPOSITION_ATTRIBUTION_COLUMNS,
    PRINT,
    PRINT_OS,
    PRINT_STATE_COLUMNS,
    UpdatePlan,
    Window,
    failure_rows,
    present_rows,
)

PRINTED, ABORTED = "PRINTED", "ABORTED"
IMPOSITION_STATUS = {PRINTED: "completed", ABORTED: "aborted"}  # R13


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
    events = present_rows(events)  # R22b: a deleted row is only withdrawn
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


def _older_notes(pairs: pd.DataFrame) -> pd.Series:
    """R23: "older than" notes from the (marker, id) order alone: an event whose time is before
    that of an event of the same job version ahead of it in that order."""
    if pairs.empty:  # no event left for the versions reached (R22b: the last one was deleted)
        return pd.Series("", index=pairs.index, dtype="object")
    ranked = (
        pairs[["event_time", "seq"]]
        .drop_duplicates()
        .sort_values(["event_time", "seq"], kind="stable")
        .reset_index(drop=True)
    )
    ranked["_rank"] = np.arange(len(ranked), dtype="int64")
    frame = (
        pairs.reset_index()
        .merge(ranked, on=["event_time", "seq"])
        .sort_values(["job_id", "version_tag", "seq"], kind="stable")
    )
    groups = [frame["job_id"], frame["version_tag"]]
    best = frame.groupby(groups, sort=False)["_rank"].cummax().groupby(groups, sort=False).shift(1)
    by_rank = frame.drop_duplicates("_rank").set_index("_rank")
    best = best.fillna(-1).astype("int64")
    older = (best >= 0) & (best.map(by_rank["event_time"]) > frame["event_time"])
    note = pd.Series("", index=frame.index, dtype="object")
    note[older] = (
        "; older than print OS #"
        + best[older].map(by_rank["source_id"]).astype("string")
        + ", ahead of it in marker order: state recomputed from the whole history"
    )
    return pd.Series(note.to_numpy(), index=frame["index"].to_numpy()).reindex(pairs.index)


def compute_print_plan(
    window: Window,
    events: pd.DataFrame,
    event_files: pd.DataFrame,
    job_files: pd.DataFrame,
    history: pd.DataFrame,
    failures: pd.DataFrame,
    loaded: pd.DataFrame,
) -> UpdatePlan:
    """Everything one window of print events attributes, and the print state of every version
    of every job it reaches now or reached before (R11, R22).

    events: valid events of the window (source_id, imposition_id, status, marker, event_time, kind).
    event_files: their files today (source_id, imposition_id, file_id, job_id, version_tag).
    job_files: every file of every version of the jobs the window reaches now or reached
        before (job_id, version_tag, file_id, imposition_id), over all impositions (R9).
    history: valid print events of those impositions, processed or the run's own (same columns).
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

    # R13: each event attributes its status to its own imposition's print row.
    plan.imposition_attributions = events.assign(
        source_type=PRINT_OS,
        operation=PRINT,
        status=events["status"].map(IMPOSITION_STATUS),
        evidence_notes="PrintOS "
        + events["status"].str.lower()
        + " (marker "
        + events["marker"].astype("string")
        + ")",
    )[IMPOSITION_ATTRIBUTION_COLUMNS].reset_index(drop=True)

    plan.print_jobs = sorted(set(job_files["job_id"]) | set(event_files["job_id"]))
    if job_files.empty:
        return guard_plan_keys(plan)  # R20: an imposition id too long for our keys

    files = _file_first_events(job_files, history)
    # Every (job version, event) pair of the reached jobs' history: the audit rows (R17), with
    # the counts as they stood right after the event in (marker, id) order (R23).
    pairs = (
        job_files[["job_id", "version_tag", "imposition_id"]]
        .drop_duplicates()
        .merge(history[["imposition_id", "source_id", "seq", "marker", "event_time"]])
        .drop(columns="imposition_id")
        .drop_duplicates(["job_id", "version_tag", "source_id"])
        .reset_index(drop=True)
    )
    per_event = _counts_at(
        pairs[["job_id", "version_tag", "source_id", "seq"]].rename(columns={"seq": "point_seq"}),
        files,
    ).merge(pairs, on=["job_id", "version_tag", "source_id"])
    own = per_event["source_id"].isin(events["source_id"])
    plan.attributions = pd.DataFrame(
        {
            "source_type": PRINT_OS,
            "source_id": per_event["source_id"],
            "marker": per_event["marker"],
            "job_id": per_event["job_id"],
            "version_tag": per_event["version_tag"],
            "operation": PRINT,
            "status": per_event["status"],
            "printed_count": per_event["printed"],
            "aborted_count": per_event["aborted"],
            "total_count": per_event["total"],
            "evidence_notes": per_event["notes"] + _older_notes(per_event),
            "event_time": per_event["event_time"],
            "own": own.to_numpy(),
        }
    )[ATTRIBUTION_COLUMNS]

    # The print state of every version of the reached jobs (R11), over the whole history;
    # a job no event reaches any more keeps no state (R22b).
    versions = files[["job_id", "version_tag"]].drop_duplicates()
    current = _counts_at(versions.assign(point_seq=np.inf), files).drop(columns="point_seq")
    # R14: the row cites the latest event of the kind that makes its status (a PRINTED one
    # for completed or partial, an ABORTED one for aborted), not merely the latest event.
    driving = current[["job_id", "version_tag", "status"]].assign(
        kind=current["status"].map({"completed": PRINTED, "partial": PRINTED, "aborted": ABORTED})
    )
    latest = (
        pairs.merge(history[["source_id", "status"]].rename(columns={"status": "kind"}))
        .merge(driving[["job_id", "version_tag", "kind"]], on=["job_id", "version_tag", "kind"])
        .sort_values(["event_time", "seq"], kind="stable")
        .groupby(["job_id", "version_tag"])
        .tail(1)[["job_id", "version_tag", "source_id", "event_time"]]
    )
    current = current.merge(latest, on=["job_id", "version_tag"], how="left")
    reached = current.loc[current["status"].notna(), "job_id"].unique()
    current = current[current["job_id"].isin(reached)]
    highest = highest_versions(current[["job_id", "version_tag"]]).assign(highest=True)
    current = current.merge(highest, on=["job_id", "version_tag"], how="left")
    plan.print_state = current.assign(
        highest=current["highest"].fillna(False).astype(bool),
        printed_count=current["printed"],
        aborted_count=current["aborted"],
        total_count=current["total"],
    )[PRINT_STATE_COLUMNS].reset_index(drop=True)
    return guard_plan_keys(plan)  # R20: an imposition id too long for our keys
