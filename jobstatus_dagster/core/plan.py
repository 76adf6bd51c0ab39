"""The shape every source resolves to, and the precedence of writes (R15). Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from jobstatus_dagster.source import PRINT_OS, SCANNER

PRINT = "print"

# Columns of each frame of an UpdatePlan; the writer relies on them.
# An attribution: what one source row says about one key (R22). The audit holds the job-version
# ones, imposition_status_updates the imposition ones; targets are projected from them.
ATTRIBUTION_COLUMNS = [
    "source_type",
    "source_id",
    "marker",
    "job_id",
    "version_tag",
    "operation",
    "status",
    "printed_count",
    "aborted_count",
    "total_count",
    "evidence_notes",
    "event_time",
    "own",  # False: a print row outside the window whose counts are refreshed, never inserted
]
IMPOSITION_ATTRIBUTION_COLUMNS = [
    "source_type",
    "source_id",
    "marker",
    "imposition_id",
    "operation",
    "status",
    "event_time",
    "evidence_notes",
]
PRINT_STATE_COLUMNS = [
    "job_id",
    "version_tag",
    "status",
    "printed_count",
    "aborted_count",
    "total_count",
    "highest",
    "notes",
    "event_time",
    "source_id",
]
TARGET_COLUMNS = ["status", "event_time", "source_type", "source_id", "notes"]
IMPOSITION_OP_COLUMNS = ["imposition_id", "operation", *TARGET_COLUMNS]
JOB_OP_COLUMNS = ["job_id", "version_tag", "operation", *TARGET_COLUMNS]
JOB_STATE_COLUMNS = ["job_id", "operation", "value", "version_tag", "precedence", *TARGET_COLUMNS]
AUDIT_VERDICT_COLUMNS = [
    "source_type",
    "source_id",
    "job_id",
    "version_tag",
    "operation",
    "applied",
    "notes",
]
FAILURE_COLUMNS = ["source_type", "source_id", "reason", "subject", "detail", "retryable"]
PROCESSED_COLUMNS = ["source_id", "marker", "kind"]  # kind: window | late | moved | retry | gone
# R22b: a processed row the shop deleted; the run withdraws what it was attributed.
GONE = "gone"


def present_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The loaded rows that still exist (resolution never sees a deleted row)."""
    if "kind" not in rows:
        return rows
    return rows[rows["kind"] != GONE].reset_index(drop=True)


# R20: data that may arrive late; retried on later runs. A missing *_operations row may be
# planned later, and an operation with no code (R8) may get one when the shop edits the table.
RETRYABLE_REASONS = frozenset(
    {
        "unmapped_imposition",
        "unrecognised_code",
        "missing_job",
        "missing_operation_row",
        "unmapped_operation",
        "operations_not_object",
    }
)
# R20: an identifier longer than one of our btree keys allows (core.identifiers.MAX_KEY_BYTES):
# recorded against its row, dropped from the row's attributions; the rest still applies. Not
# retryable: the source row itself holds the value.
IDENTIFIER_TOO_LONG = "identifier_too_long"
# R20: jobs.operations of the job is JSON but not an object (null, a string, a number, an
# array): left as the shop holds it, recorded against each row that would write it; retryable,
# as the shop may fix the value (io/writer.write_failures).
OPERATIONS_NOT_OBJECT = "operations_not_object"
# R20: a well-formed file id of another customer: recorded once per file id, and not a
# data-quality failure (another customer's file is not ours to fix).
FOREIGN_FILE = "foreign_file"
NOT_DATA_QUALITY_REASONS = frozenset({FOREIGN_FILE})


def precedence(source_type: str, operation: str) -> int:
    """R15: print_os owns ``print``; the scanner owns every other operation."""
    owner = PRINT_OS if operation == PRINT else SCANNER
    return 1 if source_type == owner else 0


def empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object") for name in columns})


def failure_rows(
    frame: pd.DataFrame,
    source_type: str,
    reason: str | pd.Series,
    subject: str | pd.Series,
    detail: str | pd.Series,
) -> pd.DataFrame:
    """Failures (R20) for each row of ``frame`` (which carries ``source_id``); retryable follows
    the reason. Values are a constant or a Series aligned to ``frame``."""

    def values(value: str | pd.Series) -> object:
        return value.to_numpy() if isinstance(value, pd.Series) else value

    retryable = (
        reason.isin(RETRYABLE_REASONS).to_numpy()
        if isinstance(reason, pd.Series)
        else reason in RETRYABLE_REASONS
    )
    return pd.DataFrame(
        {
            "source_type": source_type,
            "source_id": frame["source_id"].astype("int64").to_numpy(),
            "reason": values(reason),
            "subject": values(subject),
            "detail": values(detail),
            "retryable": retryable,
        },
        columns=FAILURE_COLUMNS,
    )


Position = tuple[int, int]  # (marker, source id): a place in a source's marker order


@dataclass(frozen=True)
class Sweep:
    """One run's slice of the history sweep (R19): rows after ``start`` up to ``end`` in marker
    order were re-checked; ``end`` None means the slice reached the window, so the next sweep
    starts again from the lowest marker. ``start`` None: this slice began there."""

    start: Position | None
    end: Position | None


@dataclass(frozen=True)
class Window:
    """Source ids/markers (from_marker, to_marker] of one run."""

    source_type: str
    from_marker: int
    to_marker: int
    sweep: Sweep | None = None

    @property
    def label(self) -> str:
        return f"{self.source_type} ({self.from_marker}, {self.to_marker}]"


@dataclass
class UpdatePlan:
    """Everything one run will write, computed before any write (so a bad row never half-writes).

    ``attributions`` define what the window's own rows attribute (their previous attributions
    not in it are withdrawn); ``print_jobs`` are the jobs whose PrintOS print state
    ``print_state`` replaces. ``generation`` is the processing generation the plan was read at
    (R24); ``replan`` makes the same plan again from what is committed now.
    """

    window: Window
    attributions: pd.DataFrame = field(default_factory=lambda: empty(ATTRIBUTION_COLUMNS))
    imposition_attributions: pd.DataFrame = field(
        default_factory=lambda: empty(IMPOSITION_ATTRIBUTION_COLUMNS)
    )
    print_state: pd.DataFrame = field(default_factory=lambda: empty(PRINT_STATE_COLUMNS))
    print_jobs: list[str] = field(default_factory=list)
    failures: pd.DataFrame = field(default_factory=lambda: empty(FAILURE_COLUMNS))
    processed: pd.DataFrame = field(default_factory=lambda: empty(PROCESSED_COLUMNS))
    processing_time: datetime | None = None  # R14: recorded as the rows' first processing
    generation: int = -1
    replan: Callable[[], UpdatePlan] | None = None
    customer: str = "Labex"  # R4's customer token: the writer reads job versions with it (R12)

    def summary(self) -> dict[str, int]:
        own = (
            self.attributions[self.attributions["own"].astype(bool)]
            if len(self.attributions)
            else self.attributions
        )
        return {
            "rows_read": len(self.processed),
            "attributions": len(own),
            "imposition_attributions": len(self.imposition_attributions),
            "job_versions": len(own[["job_id", "version_tag"]].drop_duplicates())
            if len(own)
            else 0,
            "failures": len(self.failures),
        }
