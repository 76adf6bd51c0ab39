"""Scans → operation updates (R5–R8, R14–R17). Pure: codes, operations JSON, runlist choice, plan."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from jobstatus_dagster.core.identifiers import (
    FOREIGN,
    MALFORMED,
    classify_file_ids,
    foreign_file_failures,
    guard_plan_keys,
    natural_key,
    normalise_operation,
    parse_file_ids,
)
from jobstatus_dagster.core.plan import (
    ATTRIBUTION_COLUMNS,
    FAILURE_COLUMNS,
    IMPOSITION_ATTRIBUTION_COLUMNS,
    SCANNER,
    UpdatePlan,
    Window,
    failure_rows,
)

# R5: <job_id>_<version_tag>, job id as in R4 (two digit groups). \Z, not $: "$" also matches
# before a trailing newline (R4: codes are trimmed first, and compared whole).
JOB_CODE = re.compile(r"^(?P<job_id>[0-9]{1,20}_[0-9]{1,20})_(?P<version_tag>[^_\s]{1,40})\Z")
_TRUE_WORDS = frozenset({"true", "yes", "y", "1", "done", "completed", "ok"})


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_WORDS
    return False


@dataclass(frozen=True)
class ParsedOperations:
    names: tuple[str, ...]
    problems: tuple[str, ...]  # descriptions of unusable parts (R20)


def parse_operations(raw: str | None) -> ParsedOperations:
    """Every shape R7 lists; never raises. Unusable parts are described, the rest still applies."""
    if raw is None:
        return ParsedOperations((), ("operations is NULL",))
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):
        return ParsedOperations((), (f"operations is not JSON: {str(raw)[:80]}",))
    names: list[str] = []
    problems: list[str] = []

    def from_list(items: list) -> None:
        for item in items:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, dict):
                label = item.get("operation", item.get("name"))
                if isinstance(label, str):
                    names.append(label)
                else:
                    problems.append(f"list item without operation/name: {json.dumps(item)[:80]}")
            else:
                problems.append(f"unusable list item: {json.dumps(item)[:80]}")

    if isinstance(value, dict) and "operations" in value:
        inner = value["operations"]
        if isinstance(inner, list):
            from_list(inner)
        else:
            problems.append(f"'operations' is not a list: {json.dumps(inner)[:80]}")
        # R7 lists {"operations": [...]} alone: other keys beside it are a mix of two shapes.
        # The list applies; the other keys are not guessed at, and are recorded, not dropped.
        extra = [key for key in value if key != "operations"]
        if extra:
            problems.append(
                "keys beside 'operations' ignored: " + ", ".join(json.dumps(k) for k in extra)
            )
    elif isinstance(value, dict):
        names.extend(key for key, flag in value.items() if _truthy(flag))
    elif isinstance(value, list):
        from_list(value)
    else:
        problems.append(f"unusable operations shape: {json.dumps(value)[:80]}")
    normalised = [normalise_operation(n) for n in names]
    empty = [n for n, norm in zip(names, normalised, strict=True) if not norm]
    problems.extend(f"empty operation name {n!r}" for n in empty)
    unique = tuple(dict.fromkeys(n for n in normalised if n))
    return ParsedOperations(unique, tuple(problems))


def classify_codes(codes: pd.Series, runlist_ids: set[str]) -> pd.DataFrame:
    """R5: runlist first, then job barcode, else unrecognised. Columns code_kind, runlist_id,
    job_id, version_tag, aligned to ``codes`` (already trimmed)."""
    text = codes.astype("string")
    is_runlist = text.isin(list(runlist_ids)).fillna(False).astype(bool)
    job = text.str.extract(JOB_CODE)
    is_job = job["job_id"].notna() & ~is_runlist
    kind = pd.Series("unrecognised", index=codes.index, dtype="object")
    kind[is_runlist] = "runlist"
    kind[is_job] = "job"
    return pd.DataFrame(
        {
            "code_kind": kind,
            "runlist_id": text.where(is_runlist),
            "job_id": job["job_id"].where(is_job),
            "version_tag": job["version_tag"].where(is_job),
        },
        index=codes.index,
    )


def choose_runlists(candidates: pd.DataFrame) -> pd.DataFrame:
    """R6: per scan, the runlist whose impositions have the highest print marker; ties, and
    runlists never printed, go to the greatest runlist_id in natural order ('RL-10' > 'RL-9').
    ``candidates``: source_id, runlist_id, max_marker (NA: never printed). Returns source_id,
    runlist_id, note (set where there was a choice: which, and why)."""
    if candidates.empty:
        return pd.DataFrame(columns=["source_id", "runlist_id", "note"])
    # Integers throughout: a bigint marker is neither printed as "2692.0" nor rounded.
    markers = candidates["max_marker"].astype("Int64")
    names = sorted(set(candidates["runlist_id"]), key=natural_key)
    ranked = candidates.assign(
        max_marker=markers,
        _printed=markers.notna().to_numpy(dtype=bool),
        _marker=markers.fillna(0).to_numpy(dtype="int64"),
        _rank=candidates["runlist_id"].map({name: i for i, name in enumerate(names)}),
    ).sort_values(["source_id", "_printed", "_marker", "_rank"], kind="stable")
    by_scan = ranked.groupby("source_id", sort=False)["runlist_id"]
    options = by_scan.agg(lambda s: ", ".join(sorted(set(s), key=natural_key)))
    count = by_scan.nunique()
    chosen = ranked.groupby("source_id", sort=False).tail(1).set_index("source_id")
    best = ranked.merge(
        chosen[["_printed", "_marker"]].reset_index(), on=["source_id", "_printed", "_marker"]
    )
    tied = best.groupby("source_id")["runlist_id"].nunique().reindex(chosen.index) > 1
    marker_text = "highest print marker " + chosen["max_marker"].astype("string")
    why = (
        marker_text.where(~tied, marker_text + ", tied: greatest runlist id")
        .where(chosen["_printed"], "none printed yet: greatest runlist id")
        .astype("object")
    )
    note = pd.Series(pd.NA, index=chosen.index, dtype="object")
    several = count[count > 1].index
    note[several] = (
        "job is in runlists "
        + options[several]
        + "; chose "
        + chosen.loc[several, "runlist_id"]
        + " ("
        + why[several]
        + ")"
    )
    return pd.DataFrame(
        {
            "source_id": chosen.index,
            "runlist_id": chosen["runlist_id"].to_numpy(),
            "note": note.to_numpy(),
        }
    )


def scan_operations(
    scans: pd.DataFrame, known_operations: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(source_id, operation) of each scan's usable, known operations, and the failures (R7, R8)."""
    rows, failures = [], []
    for source_id, raw in zip(scans["source_id"], scans["operations_json"], strict=True):
        parsed = parse_operations(None if pd.isna(raw) else raw)
        for problem in parsed.problems:
            failures.append((source_id, "unusable_operations", problem[:200], problem))
        for name in parsed.names:
            if name in known_operations:
                rows.append((source_id, name))
            else:
                failures.append(
                    (
                        source_id,
                        "unknown_operation",
                        name[:200],
                        f"operation {name!r} is not in operation_codes",
                    )
                )
        if not parsed.names and not parsed.problems:
            failures.append((source_id, "no_operations", "", "scan names no operation"))
    ops = pd.DataFrame(rows, columns=["source_id", "operation"]).drop_duplicates()
    failure_frame = pd.DataFrame(failures, columns=["source_id", "reason", "subject", "detail"])
    return ops, failure_rows(
        failure_frame,
        SCANNER,
        failure_frame["reason"],
        failure_frame["subject"],
        failure_frame["detail"],
    )


def compute_scan_plan(
    window: Window,
    scans: pd.DataFrame,
    operations: pd.DataFrame,
    scan_runlists: pd.DataFrame,
    runlist_files: pd.DataFrame,
    single_jobs: pd.DataFrame,
    failures: pd.DataFrame,
    customer: str,
) -> UpdatePlan:
    """Everything to write for one window of scans.

    scans: valid scans (source_id, marker, code_text, event_time, machine_id).
    operations: (source_id, operation) usable operations per scan.
    scan_runlists: (source_id, runlist_id, note) scans that apply to a whole runlist.
    runlist_files: (runlist_id, imposition_id, file_id) of those runlists (file_id NA where an
        imposition has no mapping).
    single_jobs: (source_id, job_id, version_tag) job scans that belong to no runlist.
    """
    plan = UpdatePlan(window=window)
    extra_failures = [failures]

    parsed = parse_file_ids(runlist_files["file_id"].fillna(""), customer)
    runlist_files = runlist_files.assign(job_id=parsed["job_id"], version_tag=parsed["version_tag"])
    # R20: malformed ids per scan; another customer's well-formed id once per file id.
    has_file = runlist_files["file_id"].notna()
    kinds = classify_file_ids(runlist_files["file_id"], customer)
    bad = runlist_files[has_file & (kinds == MALFORMED)]
    extra_failures.append(
        foreign_file_failures(runlist_files.loc[has_file & (kinds == FOREIGN), "file_id"], customer)
    )
    bad_for_scans = scan_runlists.merge(bad, on="runlist_id")
    extra_failures.append(
        failure_rows(
            bad_for_scans,
            SCANNER,
            "bad_file_id",
            bad_for_scans["file_id"],
            "file id "
            + bad_for_scans["file_id"]
            + " does not read FILE_<version>_<customer>_<job id>",
        )
    )
    # An imposition of the runlist without files yet: its jobs cannot be reached now, so the scan
    # is retried when the mapping arrives (R20), instead of losing its effect on them.
    unmapped = scan_runlists.merge(
        runlist_files[runlist_files["file_id"].isna()][["runlist_id", "imposition_id"]],
        on="runlist_id",
    )
    extra_failures.append(
        failure_rows(
            unmapped,
            SCANNER,
            "unmapped_imposition",
            unmapped["imposition_id"],
            "imposition "
            + unmapped["imposition_id"].astype("string")
            + " of runlist "
            + unmapped["runlist_id"].astype("string")
            + " has no files in imposition_file_mapping yet",
        )
    )
    runlist_targets = scan_runlists.merge(
        runlist_files.dropna(subset=["job_id"])[
            ["runlist_id", "imposition_id", "job_id", "version_tag"]
        ],
        on="runlist_id",
    )
    scan_info = scans.set_index("source_id")
    notes_base = (
        "scanned "
        + scans["code_text"].astype("string")
        + " on "
        + scans["machine_id"].astype("string").fillna("unknown machine")
    )
    scan_info = scan_info.assign(note=notes_base.to_numpy())

    job_targets = pd.concat(
        [
            runlist_targets[["source_id", "job_id", "version_tag", "runlist_id", "note"]],
            single_jobs.assign(runlist_id=pd.NA, note=pd.NA)[
                ["source_id", "job_id", "version_tag", "runlist_id", "note"]
            ],
        ],
        ignore_index=True,
    ).drop_duplicates(["source_id", "job_id", "version_tag"])
    job_targets = job_targets.merge(operations, on="source_id")
    # Every imposition of the runlist, mapped to files or not (R16 decides whether its row exists).
    imposition_targets = (
        scan_runlists[["source_id", "runlist_id"]]
        .merge(runlist_files[["runlist_id", "imposition_id"]].drop_duplicates(), on="runlist_id")
        .merge(operations, on="source_id")
    )

    def attributed(frame: pd.DataFrame) -> pd.DataFrame:
        info = scan_info.loc[frame["source_id"]]
        via = ("; via runlist " + frame["runlist_id"].astype("string")).fillna("")
        chosen = ("; " + frame["note"].astype("string")).fillna("") if "note" in frame else ""
        return frame.assign(
            source_type=SCANNER,
            marker=info["marker"].to_numpy(),
            status="completed",
            event_time=info["event_time"].to_numpy(),
            evidence_notes=(info["note"].to_numpy() + via + chosen),
            printed_count=pd.NA,
            aborted_count=pd.NA,
            total_count=pd.NA,
            own=True,
        )

    plan.failures = pd.concat(extra_failures, ignore_index=True)[FAILURE_COLUMNS]
    if not imposition_targets.empty:
        plan.imposition_attributions = attributed(imposition_targets)[
            IMPOSITION_ATTRIBUTION_COLUMNS
        ].drop_duplicates(["source_id", "imposition_id", "operation"])
    if not job_targets.empty:
        plan.attributions = attributed(job_targets)[ATTRIBUTION_COLUMNS].reset_index(drop=True)
    # R20: an imposition of the runlist (or an operation name) too long for our keys is recorded
    # and left out; the scan's other impositions and its job versions still apply.
    return guard_plan_keys(plan)
