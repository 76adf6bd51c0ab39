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
    touched: pd.DataFrame, scanner_evidence: pd.DataFrame, print_state: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """job_operation_state (and so jobs.operations) of each touched (job, operation).

    print (R12): true only when the job's highest version is completed, from PrintOS's state
    when PrintOS reached the job, else true from the latest scan. Other operations: true from
    the latest scan of any version of the job.
    """
    touched_jobs = touched[JOB_KEYS].drop_duplicates()
    scans = _scanner_targets(scanner_evidence).merge(touched_jobs)
    scans = _latest(
        scans.assign(precedence=[precedence(SCANNER, op) for op in scans["operation"]]),
        JOB_KEYS,
        ["version_tag"],
    ).assign(value=True)

    print_jobs = touched_jobs.loc[touched_jobs["operation"] == PRINT, ["job_id"]]
    state = print_state.merge(print_jobs, on="job_id")
    highest = state[state["highest"].astype(bool)].drop(columns=["event_time", "source_id"])
    latest = _latest(state.dropna(subset=["event_time"]), ["job_id"])[
        ["job_id", "event_time", "source_id"]
    ]
    highest = highest.merge(latest, on="job_id", how="left")
    version_note = "version " + highest["version_tag"].astype("string") + ": "
    from_print = highest.assign(
        operation=PRINT,
        value=(highest["status"] == "completed").fillna(False).astype(bool),
        notes=(version_note + highest["notes"].astype("string")).where(
            highest["status"].notna(),
            version_note + "not printed yet (" + highest["notes"].astype("string") + ")",
        ),
        status=highest["status"].fillna("not_printed"),
        source_type=PRINT_OS,
        precedence=precedence(PRINT_OS, PRINT),
    )
    scans = scans.merge(from_print[JOB_KEYS], on=JOB_KEYS, how="left", indicator=True).query(
        "_merge == 'left_only'"
    )
    values = pd.concat(
        [from_print[JOB_STATE_COLUMNS], scans[JOB_STATE_COLUMNS]], ignore_index=True
    ).reset_index(drop=True)
    return values, _missing_keys(touched_jobs, values, JOB_KEYS)


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
) -> Projection:
    """Everything the targets of the touched keys hold, from the evidence of those keys.

    scanner_evidence: current scanner attributions of every touched (job, operation), any
    version; imposition_evidence: current attributions of the touched impositions;
    print_state: PrintOS's print state of every version of the touched jobs.
    """
    job_ops, job_ops_withdrawn = project_versions(touched_versions, scanner_evidence, print_state)
    job_state, job_state_withdrawn = project_jobs(touched_versions, scanner_evidence, print_state)
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
