"""Target values projected from the whole evidence of each key (R15, R22, R23). Pure pandas.

A run does not decide a target from the state it finds: it gathers every current attribution
of each key it touches (its own rows' and everybody else's) and projects the winner. So the
value of a key is a function of its evidence alone, whatever order the evidence was processed
in; a key no evidence supports any more is withdrawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobstatus_dagster.core.identifiers import highest_versions
from jobstatus_dagster.core.plan import (
    AUDIT_VERDICT_COLUMNS,
    IMPOSITION_OP_COLUMNS,
    JOB_OP_COLUMNS,
    JOB_STATE_COLUMNS,
    PRINT,
    PRINT_OS,
    SCANNER,
    precedence,
)

VERSION_KEYS = ["job_id", "version_tag", "operation"]
JOB_KEYS = ["job_id", "operation"]
IMPOSITION_KEYS = ["imposition_id", "operation"]


@dataclass
class Projection:
    """What the targets of the touched keys must hold; ``*_withdrawn`` keys hold nothing."""

    job_ops: pd.DataFrame
    job_ops_withdrawn: pd.DataFrame
    imposition_ops: pd.DataFrame
    imposition_ops_withdrawn: pd.DataFrame
    job_state: pd.DataFrame
    job_state_withdrawn: pd.DataFrame
    verdicts: pd.DataFrame


def _latest(frame: pd.DataFrame, keys: list[str], extra: list[str] | None = None) -> pd.DataFrame:
    """One row per key: highest precedence (if present), latest event time, highest source id."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = [*keys, *(["precedence"] if "precedence" in frame else []), "event_time", "source_id"]
    ordered = frame.sort_values([*order, *(extra or [])], kind="stable", na_position="first")
    return ordered.groupby(keys, sort=False).tail(1).reset_index(drop=True)


def _missing_keys(touched: pd.DataFrame, found: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    touched = touched[keys].drop_duplicates()
    if found.empty:
        return touched.reset_index(drop=True)
    merged = touched.merge(found[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return merged.loc[merged["_merge"] == "left_only", keys].reset_index(drop=True)


def _scanner_targets(evidence: pd.DataFrame) -> pd.DataFrame:
    return evidence.assign(status="completed", notes=evidence["evidence_notes"])


def project_versions(
    touched: pd.DataFrame, scanner_evidence: pd.DataFrame, print_state: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """job_operations of each touched (job, version, operation): PrintOS's print state of the
    version where it has one (R15), else the latest scan attributed to it (R15), else none."""
    scans = _latest(
        _scanner_targets(scanner_evidence).merge(touched[VERSION_KEYS].drop_duplicates()),
        VERSION_KEYS,
    )
    printed = print_state[print_state["status"].notna()]
    from_print = printed.assign(
        operation=PRINT, source_type=PRINT_OS, source_id=printed["source_id"]
    ).merge(touched[VERSION_KEYS].drop_duplicates())
    scans = scans.merge(
        from_print[VERSION_KEYS], on=VERSION_KEYS, how="left", indicator=True
    ).query("_merge == 'left_only'")
    values = pd.concat(
        [from_print[JOB_OP_COLUMNS], scans[JOB_OP_COLUMNS]], ignore_index=True
    ).reset_index(drop=True)
    return values, _missing_keys(touched, values, VERSION_KEYS)


def project_jobs(
    touched: pd.DataFrame,
    scanner_evidence: pd.DataFrame,
    print_state: pd.DataFrame,
    versions: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """job_operation_state (and so jobs.operations) of each touched (job, operation).

    print (R12): true exactly when the job's highest version is completed, by R15 per version
    (_print_flags). Other operations: true from the latest scan of any version of the job.
    """
    touched_jobs = touched[JOB_KEYS].drop_duplicates()
    scans = _scanner_targets(scanner_evidence).merge(touched_jobs)
    scans = scans.assign(precedence=[precedence(SCANNER, op) for op in scans["operation"]])
    is_print = scans["operation"] == PRINT
    others = _latest(scans[~is_print], JOB_KEYS, ["version_tag"]).assign(value=True)
    print_jobs = touched_jobs.loc[touched_jobs["operation"] == PRINT, ["job_id"]]
    flags = _print_flags(print_jobs, scans[is_print], print_state, versions)
    values = pd.concat(
        [flags[JOB_STATE_COLUMNS], others[JOB_STATE_COLUMNS]], ignore_index=True
    ).reset_index(drop=True)
    return values, _missing_keys(touched_jobs, values, JOB_KEYS)


def _print_flags(
    print_jobs: pd.DataFrame,
    print_scans: pd.DataFrame,
    print_state: pd.DataFrame,
    versions: pd.DataFrame,
) -> pd.DataFrame:
    """R12/R15: the print flag of each job with print evidence. Its version is the highest of
    those with files, PrintOS state or print scans; that version's status is PrintOS's where
    PrintOS has an event for it, else the scans' (a scanned print completes it), else it is
    not printed: a completed lower version never makes the flag true."""
    key = ["job_id", "version_tag"]
    print_jobs, print_scans, print_state, versions = (
        _text_keys(f) for f in (print_jobs, print_scans, print_state, versions)
    )
    state = print_state.merge(print_jobs, on="job_id")
    scans = print_scans.merge(print_jobs, on="job_id")
    evidenced = pd.DataFrame(
        {"job_id": pd.Series(sorted(set(state["job_id"]) | set(scans["job_id"])), dtype=object)}
    )
    known = pd.concat(
        [state[key], scans[key], versions[key].merge(evidenced, on="job_id")], ignore_index=True
    ).merge(evidenced, on="job_id")
    highest = highest_versions(known)
    latest_print = _latest(state.dropna(subset=["event_time"]), ["job_id"])[
        ["job_id", "event_time", "source_id"]
    ]
    note = "version " + highest["version_tag"].astype("string") + ": "
    highest = highest.assign(version_note=note)

    printed = state[state["status"].notna()].drop(columns=["event_time", "source_id"])
    from_print = highest.merge(printed, on=key).merge(latest_print, on="job_id", how="left")
    from_print = from_print.assign(
        operation=PRINT,
        value=(from_print["status"] == "completed").astype(bool),
        notes=from_print["version_note"] + from_print["notes"].astype("string"),
        source_type=PRINT_OS,
        precedence=precedence(PRINT_OS, PRINT),
    )
    rest = minus(highest, from_print, key)
    from_scans = _latest(rest.merge(scans, on=key), key).assign(value=True)
    unprinted = minus(rest, from_scans, key)
    unprinted = unprinted.merge(
        state[[*key, "notes"]].rename(columns={"notes": "state_notes"}), on=key, how="left"
    )
    by_press = unprinted.merge(latest_print, on="job_id")
    by_press = by_press.assign(source_type=PRINT_OS, precedence=precedence(PRINT_OS, PRINT))
    by_scanner = minus(unprinted, by_press, ["job_id"]).merge(
        _latest(scans, ["job_id"])[["job_id", "event_time", "source_id", "precedence"]],
        on="job_id",
    )
    by_scanner = by_scanner.assign(source_type=SCANNER)
    # A job whose versions PrintOS reached but never printed: its state has no event time.
    no_event = minus(unprinted, pd.concat([by_press, by_scanner]), ["job_id"]).assign(
        event_time=pd.NaT,
        source_id=pd.NA,
        source_type=PRINT_OS,
        precedence=precedence(PRINT_OS, PRINT),
    )
    unprinted = pd.concat([by_press, by_scanner, no_event], ignore_index=True)
    detail = unprinted["state_notes"].astype("string")
    unprinted = unprinted.assign(
        operation=PRINT,
        value=False,
        status="not_printed",
        notes=(unprinted["version_note"] + "not printed yet (" + detail + ")").fillna(
            unprinted["version_note"] + "not printed yet"
        ),
    )
    frames = [f[JOB_STATE_COLUMNS] for f in (from_print, from_scans, unprinted) if len(f)]
    if not frames:
        return pd.DataFrame(columns=JOB_STATE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def _text_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns as objects, so empty frames (float columns) merge with full ones."""
    keys = [c for c in ("job_id", "version_tag") if c in frame]
    return frame.astype({c: object for c in keys})


def minus(frame: pd.DataFrame, other: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows of ``frame`` whose ``keys`` are not in ``other``."""
    if frame.empty or other.empty:
        return frame.reset_index(drop=True)
    merged = frame.merge(other[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge").reset_index(drop=True)


def project_impositions(
    touched: pd.DataFrame, evidence: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """imposition_operations of each touched (imposition, operation): the winner (R13, R15)
    among every source row attributed to it."""
    candidates = evidence.merge(touched[IMPOSITION_KEYS].drop_duplicates())
    candidates = candidates.assign(
        precedence=[
            precedence(t, op)
            for t, op in zip(candidates["source_type"], candidates["operation"], strict=True)
        ],
        notes=candidates["evidence_notes"],
    )
    values = _latest(candidates, IMPOSITION_KEYS)[IMPOSITION_OP_COLUMNS]
    return values, _missing_keys(touched, values, IMPOSITION_KEYS)


def scanner_verdicts(evidence: pd.DataFrame, print_versions: set[tuple[str, str]]) -> pd.DataFrame:
    """R23: each scan's `applied` and notes as if scans were processed one at a time in
    (marker, id) order: applied when it is at least as late as every scan of the same row
    (job version, operation, R15) before it; a scanner print never applies to a version whose
    print PrintOS holds."""
    if evidence.empty:
        return pd.DataFrame(columns=AUDIT_VERDICT_COLUMNS)
    pairs = (
        evidence[["event_time", "source_id"]]
        .drop_duplicates()
        .sort_values(["event_time", "source_id"], kind="stable")
        .reset_index(drop=True)
    )
    pairs["_order"] = np.arange(len(pairs), dtype="int64")
    frame = evidence.merge(pairs, on=["event_time", "source_id"]).sort_values(
        [*VERSION_KEYS, "marker", "source_id"], kind="stable"
    )
    groups = [frame[k] for k in VERSION_KEYS]
    running = frame.groupby(groups, sort=False)["_order"].cummax()
    earlier_best = running.groupby(groups, sort=False).shift(1)
    applied = earlier_best.isna() | (frame["_order"] >= earlier_best)
    holder = frame.drop_duplicates("_order").set_index("_order")
    best = earlier_best.fillna(-1).astype("int64")
    held_id = best.map(holder["source_id"])
    held_time = best.map(holder["event_time"])
    held_note = (
        "; not applied: scanner #"
        + held_id.astype("Int64").astype("string")
        + " at "
        + held_time.astype("string")
        + " holds "
        + frame["operation"]
    )
    held = pd.MultiIndex.from_frame(frame[["job_id", "version_tag"]].astype(object)).isin(
        list(print_versions)
    )
    by_print = (frame["operation"] == PRINT).to_numpy() & held
    notes = frame["evidence_notes"].astype("string")
    notes = notes.where(applied, notes + held_note)
    notes = notes.where(
        ~by_print,
        frame["evidence_notes"] + "; not applied: the press's own print status takes precedence",
    )
    return frame.assign(applied=applied.to_numpy(dtype=bool) & ~by_print, notes=notes)[
        AUDIT_VERDICT_COLUMNS
    ].reset_index(drop=True)


def project(
    touched_versions: pd.DataFrame,
    touched_impositions: pd.DataFrame,
    scanner_evidence: pd.DataFrame,
    imposition_evidence: pd.DataFrame,
    print_state: pd.DataFrame,
    versions: pd.DataFrame,
) -> Projection:
    """Everything the targets of the touched keys hold, from the evidence of those keys.

    scanner_evidence: current scanner attributions of every touched (job, operation), any
    version; imposition_evidence: current attributions of the touched impositions;
    print_state: PrintOS's print state of every version of the touched jobs;
    versions: (job_id, version_tag) with files of the touched print jobs (R12).
    """
    job_ops, job_ops_withdrawn = project_versions(touched_versions, scanner_evidence, print_state)
    job_state, job_state_withdrawn = project_jobs(
        touched_versions, scanner_evidence, print_state, versions
    )
    imposition_ops, imposition_withdrawn = project_impositions(
        touched_impositions, imposition_evidence
    )
    return Projection(
        job_ops=job_ops,
        job_ops_withdrawn=job_ops_withdrawn,
        imposition_ops=imposition_ops,
        imposition_ops_withdrawn=imposition_withdrawn,
        job_state=job_state,
        job_state_withdrawn=job_state_withdrawn,
        verdicts=scanner_verdicts(
            scanner_evidence,
            set(
                print_state.loc[
                    print_state["status"].notna(), ["job_id", "version_tag"]
                ].itertuples(index=False, name=None)
            ),
        ),
    )


VERSION_STATE_COLUMNS = [
    *VERSION_KEYS,
    "status",
    "printed_count",
    "aborted_count",
    "total_count",
    "notes",
    "event_time",
    "source_type",
    "source_id",
]


def version_state(job_ops: pd.DataFrame, print_state: pd.DataFrame) -> pd.DataFrame:
    """R25: the state of each projected (job, version, operation) a change-stream reader holds:
    its status and source, with PrintOS's counts where PrintOS's print state decided it."""
    counts = print_state[["job_id", "version_tag", "printed_count", "aborted_count", "total_count"]]
    from_print = (job_ops["operation"] == PRINT) & (job_ops["source_type"] == PRINT_OS)
    with_counts = job_ops[from_print].merge(counts, on=["job_id", "version_tag"], how="left")
    return pd.concat([with_counts, job_ops[~from_print]], ignore_index=True).reindex(
        columns=VERSION_STATE_COLUMNS
    )
