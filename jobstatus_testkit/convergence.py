"""Random small shops and random schedules of processing, for the convergence property (R22).

A schedule commits the shop's source rows in a random order, processes random windows of either
source, re-runs windows below rows already processed, backfills random ranges and everything,
lets a stale plan write after a newer window landed (R24), crashes writes at the crash points
(R18), corrects reference data, and plays the shop: it deletes or corrects committed source
rows, writes its own value over a `*_operations` row jobstatus wrote, deletes such a row and adds
it again. Shops are sometimes hostile (R1, R4, R20): identifiers longer than a btree index row
allows, `jobs.operations` values that are not JSON objects, ids padded with whitespace, `Print`
spelled so in `operation_codes`.

What is checked (``check_schedule``):

- after every step (R22a), unless an exemption holds: the target state (``Env.state()`` without
  the markers, open failures included) equals ONE from-scratch run over the source rows
  processed so far, made on a second database pair (the reference ``Env``): today's reference
  data, the processed rows that still exist with their current contents, both sources drained.
  Exempt, until the next backfill of both sources: after reference data changed, the shop
  overwrote or re-added an operation row, or a source row was deleted or corrected (R22b), and
  after a print row was committed behind a processed scan it precedes (R22a's exception); also
  while a print row that a scan saw committed (R6 reads committed print rows) is not processed,
  and while a write killed part-way is not repaired (a run still writing, until its source is
  drained or backfilled: R18).
- after every checked step, the read surfaces (``io.status.read_job_status``,
  ``io.feed.read_jobs``) agree with an independent reading of the state tables on trimmed ids
  and normalised operation names (R4, R7, R8): each job once, its operations' statuses per
  version, its print counts, its `jobs.operations` flags, the job lists per print status;
- a write, plan or read that raises is a problem (R20: one bad row never stops a source);
- at the end: a backfill where one is due, then the state equals a from-scratch run over all the
  data, and re-running anything changes nothing, times included (R23).

Used by test_convergence_property.py (small budget) and by `make faults` scenario 9 (large one).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from hypothesis import strategies as st

from jobstatus_dagster.config import Settings, load_settings
from jobstatus_dagster.core.plan import UpdatePlan, Window
from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.io import writer
from jobstatus_dagster.io.feed import JOB_STATUSES, PENDING, JobFilter, read_jobs
from jobstatus_dagster.io.sources import chunk_reader, engine_marker_bounds, source_backlog
from jobstatus_dagster.io.status import read_job_status
from jobstatus_dagster.io.writer import write_plan
from jobstatus_dagster.pipeline.ops import load_window_rows
from jobstatus_dagster.pipeline.print_os import plan_print
from jobstatus_dagster.pipeline.scanner import plan_scans
from jobstatus_dagster.pipeline.windows import backfill_windows, plan_next_run
from jobstatus_dagster.source import PRINT_OS, SCANNER, SOURCE_NAMES
from jobstatus_testkit.changes import fold_problems

T0 = datetime(2026, 11, 1, 8, 0, 0)
PLANNERS: dict[str, Callable[..., UpdatePlan]] = {PRINT_OS: plan_print, SCANNER: plan_scans}
OPERATION_IDS = {"print": "op001", "coating": "op003", "kiss_cut": "op006", "backscore": "op009"}
CRASH_POINTS = ("after_logs_commit", "before_jobmanager_commit")
PRINT_STATUSES = ("PRINTED", "PRINTED", "ABORTED", "printed", "JAMMED")
SCAN_OPERATIONS = ("coating", "kiss_cut", "backscore", "print")
WHITESPACE = " \t\n\r"  # R4: what trimming removes, in Python and SQL alike
TRIM_SQL = "E' \\t\\n\\r'"


def _noise(n: int, seed: str) -> str:
    """``n`` hex characters that do not compress: long in bytes in an index row too (a btree
    compresses long index rows first, so ``'x' * 3000`` would fit)."""
    out, block = "", seed.encode()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block.hex()
    return out[:n]


# Hostile identifiers (R1, R20): each longer than a btree index row allows (2,704 bytes).
LONG_IMPOSITION = "IMP-" + _noise(3000, "imposition")
LONG_RUNLIST = "RL-" + _noise(3000, "runlist")
LONG_CODE = "CODE-" + _noise(3000, "code")
LONG_JOB = str(7**3600)[:1500] + "_" + str(3**6300)[:1500]  # R4: two digit groups, 3,001 chars
ODD_OPERATIONS = ("null", "[1, 2]", '"text"')  # jobs.operations that is not a JSON object
LEGACY = '{"legacy": true}'
PADDINGS = (" {}", "{} ", "\t{}\n", "{}\r\n")


def trim(value: str) -> str:
    return value.strip(WHITESPACE)


def normalise(name: str | None) -> str | None:
    """R7/R8: lower case, spaces and hyphens to `_`."""
    return None if name is None else re.sub(r"[ -]", "_", trim(name).lower())


def abbreviate(text: str) -> str:
    """Long hostile identifiers shortened, so a problem line stays readable."""
    return re.sub(r"[0-9a-fA-F_x]{80,}", lambda m: f"{m.group()[:12]}…({len(m.group())})", text)


def _short(value: object) -> str:
    if isinstance(value, str):
        return abbreviate(repr(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_short(k)}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, set)):
        inner = ", ".join(
            _short(v) for v in (sorted(value, key=repr) if isinstance(value, set) else value)
        )
        return {list: f"[{inner}]", tuple: f"({inner})", set: f"{{{inner}}}"}[type(value)]
    return repr(value)


# ----- the shop ------------------------------------------------------------------------------
@dataclass(repr=False)
class ShopData:
    """Everything in the shop's tables; corrections and the shop's own writes mutate it, so it
    is always today's data (a from-scratch run starts from it)."""

    jobs: list[str]  # job ids; every job has version "1", some also "2"
    in_jobs: set[str]
    files: dict[str, list[str]]  # imposition -> file ids
    runlists: dict[str, list[str]]  # runlist -> impositions
    # (job, version, op id) -> the row's status today, before jobstatus writes (its original)
    job_ops: dict[tuple[str, str, str], str | None]
    imposition_ops: dict[tuple[str, str], str | None]
    codes: dict[str, str | None]  # operation name, as the shop spells it -> code
    prints: list[
        tuple[int, str, str, int, datetime | None, datetime]
    ]  # id, name, status, marker, time, created
    scans: list[tuple[int, str, datetime, str]]  # id, code, time, operations json
    scan_codes: list[str] = field(default_factory=list)  # codes a scan (or a correction) uses
    # jobs.operations as the shop holds it before jobstatus writes (JSON text), per job
    job_values: dict[str, str] = field(default_factory=dict)
    # how an identifier is spelled in a column: (column kind, id) -> raw value (R4 padding)
    pads: dict[tuple[str, str], str] = field(default_factory=dict)
    # R20 retries: at once (every run re-loads the rows of retryable failures) or not within
    # the schedule (so a re-run sees only its window: retries would hide what it forgets)
    retry_interval: int = 0
    # the two print rows of the job printed across two impositions far apart in marker order
    split: tuple[int, ...] = ()

    def raw(self, kind: str, ident: str) -> str:
        return self.pads.get((kind, ident), ident)

    def fingerprint(self) -> str:
        """The reference data (not the source rows), for caching a from-scratch state."""
        return repr(
            (
                sorted(self.in_jobs),
                sorted(self.files.items()),
                sorted(self.runlists.items()),
                sorted(self.job_ops.items()),
                sorted(self.imposition_ops.items()),
                sorted(self.codes.items(), key=repr),
                sorted(self.job_values.items()),
                sorted(self.pads.items()),
            )
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={_short(value)}" for name, value in vars(self).items())
        return f"ShopData({fields})"


def job_operation_id(job: str, version: str, code: str) -> str:
    """The row's primary key (a btree: kept short whatever the job id)."""
    key = f"{job}:{version}:{code}"
    return key if len(key) < 200 else "jo-" + hashlib.sha256(key.encode()).hexdigest()


def imposition_operation_id(imp: str, code: str) -> str:
    key = f"{imp}:{code}"
    return key if len(key) < 200 else "io-" + hashlib.sha256(key.encode()).hexdigest()


def _time(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@st.composite
def shops(draw: st.DrawFn, max_events: int = 8) -> ShopData:
    n_jobs = draw(st.integers(2, 4))
    jobs = [f"{100 + i}_{200 + i}" for i in range(n_jobs)]
    versions = {
        j: ["1", "2"] if draw(st.booleans()) and i == 0 else ["1"] for i, j in enumerate(jobs)
    }
    hostile = draw(st.booleans())

    def sometimes() -> bool:
        return hostile and draw(st.booleans())

    impositions = [f"IMP-{i}" for i in range(draw(st.integers(2, 4)))]
    if sometimes():  # R1/R20: an imposition id no btree row can hold, in mapping and print names
        impositions.append(LONG_IMPOSITION)
    files: dict[str, list[str]] = {}
    for imp in impositions:
        chosen = draw(st.lists(st.sampled_from(jobs), min_size=1, max_size=3))
        files[imp] = [
            f"FILE_{draw(st.sampled_from(versions[j]))}_Labex_{j}_{k}" for k, j in enumerate(chosen)
        ]
    long_job = sometimes()
    if long_job:  # a file whose job id is a 3,000-digit number
        files[draw(st.sampled_from(impositions))].append(f"FILE_1_Labex_{LONG_JOB}")
    runlists = {
        f"RL-{i}": draw(st.lists(st.sampled_from(impositions), min_size=1, max_size=3, unique=True))
        for i in range(draw(st.integers(0, 2)))
    }
    if sometimes():  # a runlist id no btree row can hold (and scans of it)
        runlists[LONG_RUNLIST] = [draw(st.sampled_from(impositions))]
    initial = st.sampled_from([None, None, "legacy"])
    job_ops = {
        (j, v, code): draw(initial)
        for j in jobs
        for v in versions[j]
        for code in OPERATION_IDS.values()
        if draw(st.integers(0, 4)) > 0
    }
    imposition_ops = {
        (imp, code): draw(initial)
        for imp in impositions
        if imp != LONG_IMPOSITION  # the shop's own btree key (the row id) could not hold it
        for code in OPERATION_IDS.values()
        if draw(st.integers(0, 4)) > 0
    }
    in_jobs = {j for j in jobs if draw(st.integers(0, 5)) > 0}
    job_values = {
        j: draw(st.sampled_from([LEGACY, *ODD_OPERATIONS])) if sometimes() else LEGACY for j in jobs
    }
    pads: dict[tuple[str, str], str] = {}
    if hostile:  # R4: ids padded with whitespace where the shop writes them
        padding = st.sampled_from(["{}", "{}", *PADDINGS])
        for kind, ident in [
            *[("jobs", j) for j in jobs],
            *[("job_operations", j) for j in jobs],
            *[("imposition_operations", i) for i in impositions],
            *[("operation_id", c) for c in OPERATION_IDS.values()],
        ]:
            spelled = draw(padding).format(ident)
            if spelled != ident:
                pads[(kind, ident)] = spelled
    codes: dict[str, str | None] = {**OPERATION_IDS, "backscore": None}
    if hostile:  # R8: the shop spells names its own way; they are normalised
        spelled_print = draw(st.sampled_from(["print", "Print"]))
        spelled_kiss = draw(st.sampled_from(["kiss_cut", "Kiss Cut", "kiss-cut"]))
        codes = {
            spelled_print: "op001",
            "coating": "op003",
            spelled_kiss: "op006",
            "backscore": None,
        }
    names = [*impositions, "IMP-unmapped"]
    prints = []
    for i in range(draw(st.integers(0, max_events))):
        minutes = draw(st.integers(0, 40))
        no_time = draw(st.integers(0, 9)) == 0
        prints.append(
            (
                i + 1,
                draw(st.sampled_from(names)),
                draw(st.sampled_from(PRINT_STATUSES)),
                draw(st.integers(1, 12)),
                None if no_time else _time(minutes),
                _time(minutes + 1),
            )
        )
    split: tuple[int, ...] = ()
    if draw(st.booleans()):  # a job printed across two impositions, far apart in marker order
        # (R11: a window that sees only one of them must still count the other, R22a). Printed
        # after every scan (minute 41 on), so committing them late is never R6's exception.
        low, high = draw(st.integers(1, 6)), draw(st.integers(7, 12))
        for part, imp, marker in (("a", impositions[0], low), ("b", impositions[1], high)):
            files[imp].append(f"FILE_1_Labex_{jobs[0]}_split{part}")
            at = _time(41 + marker)
            prints.append((len(prints) + 1, imp, "PRINTED", marker, at, at))
            split += (len(prints),)
    scan_codes = [f"{j}_{v}" for j in jobs for v in versions[j]] + list(runlists) + ["junk"]
    if long_job:
        scan_codes.append(f"{LONG_JOB}_1")
    if sometimes():
        scan_codes.append(LONG_CODE)
    scans = []
    for i in range(draw(st.integers(0, max_events))):
        scans.append(
            (
                i + 1,
                draw(st.sampled_from(scan_codes)),
                _time(draw(st.integers(0, 40))),
                _scan_operations(draw),
            )
        )
    return ShopData(
        jobs=jobs,
        in_jobs=in_jobs,
        files=files,
        runlists=runlists,
        job_ops=job_ops,
        imposition_ops=imposition_ops,
        codes=codes,
        prints=prints,
        scans=scans,
        scan_codes=scan_codes,
        job_values=job_values,
        pads=pads,
        retry_interval=draw(st.sampled_from([0, 3600])),
        split=split,
    )


def _scan_operations(draw: st.DrawFn) -> str:
    ops = draw(st.lists(st.sampled_from(SCAN_OPERATIONS), min_size=1, max_size=2, unique=True))
    shape = draw(st.sampled_from(["dict", "list"]))
    return json.dumps({o: True for o in ops} if shape == "dict" else ops)


# ----- schedules ----------------------------------------------------------------------------
Step = tuple
STEP_KINDS = (
    "commit",
    "commit",
    "run",
    "run",
    "backfill",
    "overlap",
    "race",
    "race",
    "crash",
    "correct",
    "rerun",
    "ahead",
    "ahead",
    "ahead",
    "delete",
    "delete",
    "delete",
    "correct_row",
    "readd",
    "overwrite",
    "backfill_all",
)
OP_TABLES = ("job_operations", "imposition_operations")
SHOP_VALUES = ("pending", "redo", None)  # what the shop writes into an operation row


@st.composite
def schedules(draw: st.DrawFn, data: ShopData, max_steps: int = 10) -> list[Step]:
    """Steps over the shop; commits are indexes into a random permutation of all source rows.
    Values a step needs at run time (which row, which window) are drawn as numbers and resolved
    against the state then (``pick``)."""
    rows = [(PRINT_OS, r[0]) for r in data.prints] + [(SCANNER, s[0]) for s in data.scans]
    order = draw(st.permutations(rows))
    steps: list[Step] = [("order", order)]
    source = st.sampled_from(SOURCE_NAMES)
    pick = st.integers(0, 99)
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(STEP_KINDS))
        if kind == "commit":
            steps.append(("commit", draw(st.integers(1, 4))))
        elif kind == "run":
            steps.append(("run", draw(source), draw(st.integers(1, 4))))
        elif kind == "backfill":
            lo = draw(st.integers(0, 12))
            steps.append(("backfill", draw(source), lo, lo + draw(st.integers(0, 12))))
        elif kind == "overlap":
            lo = draw(st.integers(0, 12))
            hi = lo + draw(st.integers(1, 12))
            steps.append(("overlap", draw(source), lo, hi, draw(source), draw(st.integers(0, 3))))
        elif kind == "race":
            steps.append(("race", draw(source), draw(st.integers(1, 4)), draw(st.integers(0, 3))))
        elif kind == "crash":
            steps.append(("crash", draw(source), draw(st.sampled_from(CRASH_POINTS))))
        elif kind == "correct":
            steps.append(("correct", draw(st.sampled_from(CORRECTIONS)), draw(pick)))
        elif kind == "rerun":  # one window (lo, hi], hi below the marker: rows already processed
            steps.append(
                ("rerun", draw(source), draw(st.integers(0, 12)), draw(st.integers(1, 12)))
            )
        elif kind == "ahead":  # the next window fails; the one after it runs behind it
            # mostly on PrintOS where a job is printed across two impositions (finding 1)
            on = PRINT_OS if data.split and draw(st.integers(0, 3)) else draw(source)
            steps.append(("ahead", on, draw(st.integers(1, 4))))
        elif kind == "delete":
            steps.append(("delete", draw(source), draw(pick)))
        elif kind == "correct_row":
            field_ = draw(st.sampled_from(["status", "name", "time", "code", "operations", "time"]))
            steps.append(("correct_row", draw(source), draw(pick), field_, draw(pick)))
        elif kind in ("readd", "overwrite"):
            steps.append((kind, draw(st.sampled_from(OP_TABLES)), draw(pick), draw(pick)))
        else:
            steps.append(("backfill_all",))
    if data.split and draw(st.booleans()):  # finding 1's schedule, somewhere in this one
        steps.insert(draw(st.integers(1, len(steps))), ("ahead", PRINT_OS, 1))
    return steps


def _move_file(data: ShopData, pick: int) -> None:
    imps = [i for i, f in data.files.items() if f]
    if len(data.files) < 2 or not imps:
        return
    source = imps[pick % len(imps)]
    moved = data.files[source].pop(pick % len(data.files[source]))
    others = [i for i in data.files if i != source]
    data.files[others[pick % len(others)]].append(moved)


def _drop_path(data: ShopData, pick: int) -> None:
    paths = [(r, i) for r, imps in data.runlists.items() for i in imps]
    if paths:
        runlist, imp = paths[pick % len(paths)]
        data.runlists[runlist].remove(imp)


def _add_op_row(data: ShopData, pick: int) -> None:
    missing = [
        (j, "1", code)
        for j in data.jobs
        for code in OPERATION_IDS.values()
        if (j, "1", code) not in data.job_ops
    ]
    if missing:
        data.job_ops[missing[pick % len(missing)]] = None


def _add_code(data: ShopData, pick: int) -> None:
    data.codes["backscore"] = OPERATION_IDS["backscore"]


def _add_job(data: ShopData, pick: int) -> None:
    data.in_jobs |= set(data.jobs)


CORRECTIONS = ("move_file", "drop_path", "add_op_row", "add_code", "add_job")
_CORRECT = {
    "move_file": _move_file,
    "drop_path": _drop_path,
    "add_op_row": _add_op_row,
    "add_code": _add_code,
    "add_job": _add_job,
}


# ----- the databases ------------------------------------------------------------------------
_OUR_JM_TABLES = (
    "job_status_updates",
    "imposition_status_updates",
    "job_print_state",
    "job_operation_state",
    "processing_failures",
    "processed_source_rows",
    "job_version_state",
    "job_status_changes",
    "webhook_attempts",
    "webhook_outbox",
)
_SOURCE_TABLES = {PRINT_OS: ('"print OS"', "id"), SCANNER: ("scanned_codes", "scan_id")}
_PRINT_COLUMNS = (
    "id, name, status, marker, job_name, item_id, job_complete_time, copies, payload,"
    " created_at, updated_at"
)
_SCAN_COLUMNS = "scan_id, code_text, scanned_at, machine_id, user_id, operations, metadata"
_JSON_COLUMNS = ("payload", "operations", "metadata")
_OP_ROW_IDS = {
    "job_operations": "job_operation_id",
    "imposition_operations": "imposition_operation_id",
}
# The target state without what a failed window may legitimately hold back (R22a).
PER_STEP_SKIP = ("markers",)


class Crash(RuntimeError):
    """A write stopped at a crash point, as a kill would stop it."""


class Raised(RuntimeError):
    """A plan or write of the product raised (R20: one bad row never stops a source)."""


def _raised(what: str, err: Exception) -> Raised:
    return Raised(abbreviate(f"{what} raised {type(err).__name__}: {err}")[:400])


@dataclass
class Env:
    jm: sa.Engine
    logs: sa.Engine
    settings: Settings
    committed: set[tuple[str, int]] = field(default_factory=set)
    deleted: set[tuple[str, int]] = field(default_factory=set)  # rows the shop deleted
    runs: int = 0
    subscription_id: int | None = None  # whose deliveries are folded (R25)

    # -- data --
    def write_reference(self, data: ShopData) -> None:
        """The reference tables as ``data`` says, keeping what jobstatus wrote on the op rows."""
        with self.logs.begin() as c:
            c.execute(sa.text("DELETE FROM imposition_file_mapping"))
            c.execute(sa.text("DELETE FROM production_planner_paths"))
            c.execute(sa.text("DELETE FROM operation_codes"))
            references = {
                "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES (:i, :f)": [
                    {"i": i, "f": f} for i, fs in data.files.items() for f in fs
                ],
                "INSERT INTO production_planner_paths (runlist_id, imposition_id)"
                " VALUES (:r, :i)": [
                    {"r": r, "i": i} for r, imps in data.runlists.items() for i in imps
                ],
                "INSERT INTO operation_codes (operation, operation_id) VALUES (:n, :c)": [
                    {"n": name, "c": code} for name, code in data.codes.items()
                ],
            }
            for insert, rows in references.items():
                if rows:
                    c.execute(sa.text(insert), rows)
            _insert_op_rows(c, data, "job_operations", list(data.job_ops), conflict=True)
            _insert_op_rows(c, data, "imposition_operations", list(data.imposition_ops), True)
        with self.jm.begin() as c:
            for job in sorted(data.in_jobs):
                c.execute(
                    sa.text(
                        "INSERT INTO jobs (job_id, operations) VALUES (:j, CAST(:o AS jsonb))"
                        " ON CONFLICT DO NOTHING"
                    ),
                    {"j": data.raw("jobs", job), "o": data.job_values.get(job, LEGACY)},
                )

    def commit(self, data: ShopData, rows: list[tuple[str, int]]) -> None:
        prints = {r[0]: r for r in data.prints}
        scans = {s[0]: s for s in data.scans}
        with self.jm.begin() as c:
            for source, row_id in rows:
                if source == PRINT_OS:
                    i, name, status, marker, at, created = prints[row_id]
                    c.execute(
                        sa.text(
                            'INSERT INTO "print OS" (id, name, status, marker,'
                            " job_complete_time, created_at) VALUES (:i, :n, :s, :m, :t, :c)"
                        ),
                        {"i": i, "n": name, "s": status, "m": marker, "t": at, "c": created},
                    )
                else:
                    i, code, at, ops = scans[row_id]
                    c.execute(
                        sa.text(
                            "INSERT INTO scanned_codes (scan_id, code_text, scanned_at,"
                            " machine_id, operations) VALUES (:i, :c, :t, 'm1',"
                            " CAST(:o AS jsonb))"
                        ),
                        {"i": i, "c": code, "t": at, "o": ops},
                    )
                self.committed.add((source, row_id))

    def reset(self) -> None:
        """Empty every table, the shop's and ours (a fresh shop for the next example)."""
        with self.jm.begin() as c:
            c.execute(
                sa.text(f'TRUNCATE {", ".join(_OUR_JM_TABLES)}, "print OS", scanned_codes, jobs')
            )
            self._reset_markers(c)
        with self.logs.begin() as c:
            c.execute(
                sa.text(
                    "TRUNCATE job_operations, imposition_operations, imposition_file_mapping,"
                    " production_planner_paths, operation_row_originals"
                )
            )
        self.committed.clear()
        self.deleted.clear()

    @staticmethod
    def _reset_markers(c: sa.Connection) -> None:
        c.execute(
            sa.text(
                "UPDATE processing_markers SET last_processed_id = 0, sweep_marker = NULL,"
                " sweep_source_id = NULL"
            )
        )
        # The stream starts again at its beginning: so does what its subscriber was sent.
        c.execute(sa.text("UPDATE webhook_subscriptions SET enqueued_up_to = 0"))

    def forget_processing(self, data: ShopData) -> None:
        """Back to before jobstatus ran, on the same data: for the from-scratch reference. The
        shop's rows get today's originals: each job's own `jobs.operations`, each operation
        row's value as the shop last wrote it (R22b)."""
        with self.jm.begin() as c:
            c.execute(sa.text(f"TRUNCATE {', '.join(_OUR_JM_TABLES)}"))
            c.execute(sa.text("DELETE FROM jobs"))
            self._reset_markers(c)
        with self.logs.begin() as c:
            c.execute(
                sa.text("TRUNCATE job_operations, imposition_operations, operation_row_originals")
            )
        self.write_reference(data)

    def processed_rows(self) -> dict[str, list[dict]]:
        """The source rows processed so far that still exist, with their current contents."""
        rows: dict[str, list[dict]] = {}
        with self.jm.connect() as c:
            for source, (table, column) in _SOURCE_TABLES.items():
                columns = _PRINT_COLUMNS if source == PRINT_OS else _SCAN_COLUMNS
                select = sa.text(
                    f"SELECT {columns} FROM {table} s WHERE EXISTS (SELECT 1 FROM"
                    " processed_source_rows r WHERE r.source_type = :t"
                    f" AND r.source_id = s.{column}) ORDER BY {column}"
                )
                rows[source] = [dict(r) for r in c.execute(select, {"t": source}).mappings()]
        return rows

    def insert_rows(self, rows: dict[str, list[dict]]) -> None:
        """Source rows as ``processed_rows`` gives them, committed here as they are."""
        with self.jm.begin() as c:
            for source, (table, column) in _SOURCE_TABLES.items():
                if not rows[source]:
                    continue
                names = list(rows[source][0])
                values = ", ".join(
                    f"CAST(:{n} AS jsonb)" if n in _JSON_COLUMNS else f":{n}" for n in names
                )
                params = [
                    {
                        n: json.dumps(v) if n in _JSON_COLUMNS and v is not None else v
                        for n, v in row.items()
                    }
                    for row in rows[source]
                ]
                c.execute(
                    sa.text(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({values})"), params
                )
                self.committed |= {(source, row[column]) for row in rows[source]}

    # -- the shop's own writes (R22b) --
    def delete_row(self, data: ShopData, source: str, pick: int) -> bool:
        """The shop deletes a committed source row, a processed one where there is one (R22b:
        what it attributed must be withdrawn)."""
        committed = {i for s, i in self.committed if s == source}
        processed = committed & {i for s, i in self.processed() if s == source}
        ids = sorted(processed or committed)
        if not ids:
            return False
        row_id = ids[pick % len(ids)]
        table, column = _SOURCE_TABLES[source]
        with self.jm.begin() as c:
            c.execute(sa.text(f"DELETE FROM {table} WHERE {column} = :i"), {"i": row_id})
        self.committed.discard((source, row_id))
        self.deleted.add((source, row_id))
        if source == PRINT_OS:
            data.prints = [r for r in data.prints if r[0] != row_id]
        else:
            data.scans = [s for s in data.scans if s[0] != row_id]
        return True

    def correct_row(self, data: ShopData, source: str, pick: int, what: str, choice: int) -> bool:
        """The shop changes a committed source row: a print's status, name or time, a scan's
        code, operations or time. False when nothing changed."""
        ids = sorted(i for s, i in self.committed if s == source)
        if not ids:
            return False
        row_id = ids[pick % len(ids)]
        if source == PRINT_OS:
            rows = data.prints
            what = what if what in ("status", "name", "time") else ("status", "name")[choice % 2]
            index = next(k for k, r in enumerate(rows) if r[0] == row_id)
            i, name, status, marker, at, created = rows[index]
            if what == "status":
                status = PRINT_STATUSES[choice % len(PRINT_STATUSES)]
            elif what == "name":
                names = [*data.files, "IMP-unmapped"]
                name = names[choice % len(names)]
            else:
                at = _time(choice % 41)
            new = (i, name, status, marker, at, created)
            update = (
                'UPDATE "print OS" SET name = :n, status = :s, job_complete_time = :t WHERE id = :i'
            )
            params = {"i": i, "n": name, "s": status, "t": at}
        else:
            rows = data.scans
            what = (
                what
                if what in ("code", "operations", "time")
                else ("code", "operations")[choice % 2]
            )
            index = next(k for k, s in enumerate(rows) if s[0] == row_id)
            i, code, at, ops = rows[index]
            if what == "code":
                code = data.scan_codes[choice % len(data.scan_codes)]
            elif what == "operations":
                first, second = SCAN_OPERATIONS[choice % 4], SCAN_OPERATIONS[(choice // 4) % 4]
                ops = json.dumps([first] if choice % 2 else {first: True, second: True})
            else:
                at = _time(choice % 41)
            new = (i, code, at, ops)
            update = (
                "UPDATE scanned_codes SET code_text = :c, scanned_at = :t,"
                " operations = CAST(:o AS jsonb) WHERE scan_id = :i"
            )
            params = {"i": i, "c": code, "t": at, "o": ops}
        if new == rows[index]:
            return False
        rows[index] = new
        with self.jm.begin() as c:
            c.execute(sa.text(update), params)
        return True

    def _op_rows(self, data: ShopData, table: str) -> dict[str, tuple]:
        if table == "job_operations":
            return {job_operation_id(*k): k for k in data.job_ops}
        return {imposition_operation_id(*k): k for k in data.imposition_ops}

    def _written_op_rows(self, table: str) -> list[str]:
        with self.logs.connect() as c:
            return list(
                c.execute(
                    sa.text(
                        f"SELECT {_OP_ROW_IDS[table]} FROM {table} WHERE completed_by IS NOT NULL"
                        f" ORDER BY {_OP_ROW_IDS[table]}"
                    )
                ).scalars()
            )

    def overwrite(self, data: ShopData, table: str, pick: int, choice: int) -> bool:
        """The shop writes its own value over a row jobstatus wrote: a new original (R22b)."""
        rows = self._op_rows(data, table)
        written = [r for r in self._written_op_rows(table) if r in rows]
        if not written:
            return False
        row_id, value = written[pick % len(written)], SHOP_VALUES[choice % len(SHOP_VALUES)]
        with self.logs.begin() as c:
            c.execute(
                sa.text(
                    f"UPDATE {table} SET status = :s, completed_at = NULL, completed_by = NULL,"
                    f" source_id = NULL, notes = NULL WHERE {_OP_ROW_IDS[table]} = :r"
                ),
                {"s": value, "r": row_id},
            )
        _shop_values(data, table)[rows[row_id]] = value
        return True

    def readd(self, data: ShopData, table: str, pick: int, choice: int) -> bool:
        """The shop deletes an operation row (one jobstatus wrote, if any) and adds it again
        with a new value: a new original (R22b)."""
        rows = self._op_rows(data, table)
        candidates = [r for r in self._written_op_rows(table) if r in rows] or sorted(rows)
        if not candidates:
            return False
        row_id, value = candidates[pick % len(candidates)], SHOP_VALUES[choice % len(SHOP_VALUES)]
        key = rows[row_id]
        _shop_values(data, table)[key] = value
        with self.logs.begin() as c:
            c.execute(
                sa.text(f"DELETE FROM {table} WHERE {_OP_ROW_IDS[table]} = :r"), {"r": row_id}
            )
            _insert_op_rows(c, data, table, [key], conflict=False)
        return True

    def marker(self, source: str) -> int:
        with self.jm.connect() as c:
            return int(
                c.execute(
                    sa.text(
                        "SELECT last_processed_id FROM processing_markers WHERE marker_type = :t"
                    ),
                    {"t": MARKER_TYPES[source]},
                ).scalar_one()
            )

    def processed(self) -> set[tuple[str, int]]:
        with self.jm.connect() as c:
            return {
                (r[0], int(r[1]))
                for r in c.execute(
                    sa.text("SELECT source_type, source_id FROM processed_source_rows")
                )
            }

    # -- processing --
    def plan(self, window: Window, chunk: int | None = None) -> UpdatePlan:
        settings = (
            self.settings
            if chunk is None
            else self.settings.model_copy(update={"chunk_size": chunk})
        )
        try:
            loaded = load_window_rows(self.jm, window, settings)
            return PLANNERS[window.source_type](loaded, self.jm, self.logs, settings)
        except Exception as err:
            raise _raised(f"plan of {window.label}", err) from err

    def write(self, plan: UpdatePlan, crash_at: str | None = None) -> None:
        self.runs += 1

        def crash(name: str) -> None:
            if name == crash_at:
                raise Crash(name)

        saved = writer.crash_point
        if crash_at is not None:
            writer.crash_point = crash
        try:
            write_plan(self.jm, self.logs, plan, f"run-{self.runs}")
        except Crash:
            pass
        except Exception as err:
            raise _raised(f"run of {plan.window.label}", err) from err
        finally:
            writer.crash_point = saved

    def next_window(self, source: str, chunk: int) -> Window | None:
        settings = self.settings.model_copy(update={"chunk_size": chunk})
        backlog = source_backlog(self.jm, source, settings)  # what `jobstatus process` sees
        planned = plan_next_run(source, backlog, settings.partition_width, chunk)
        return None if planned is None else Window(source, planned.from_marker, planned.to_marker)

    def run(self, source: str, chunk: int, crash_at: str | None = None) -> bool:
        window = self.next_window(source, chunk)
        if window is None:
            return False
        self.write(self.plan(window, chunk), crash_at)
        return True

    def drain(self, source: str) -> None:
        """Like `jobstatus process`: windows until nothing is past the marker, late rows last."""
        for _ in range(200):
            window = self.next_window(source, self.settings.chunk_size)
            if window is None:
                return
            self.write(self.plan(window))
            if window.from_marker == window.to_marker and self.unprocessed(source) == 0:
                return

    def unprocessed(self, source: str) -> int:
        table, column = ("print OS", "id") if source == PRINT_OS else ("scanned_codes", "scan_id")
        rows = sa.table(table, sa.column(column))
        done = sa.table("processed_source_rows", sa.column("source_type"), sa.column("source_id"))
        never_processed = ~sa.exists().where(
            done.c.source_type == source, done.c.source_id == rows.c[column]
        )
        with self.jm.connect() as c:
            return c.execute(
                sa.select(sa.func.count()).select_from(rows).where(never_processed)
            ).scalar_one()

    def window_after(self, source: str, after: int, chunk: int) -> Window | None:
        """The window a sensor plans after ``after`` (the one queued behind another)."""
        chunks = chunk_reader(self.jm, source, chunk)
        for planned in backfill_windows(
            chunks, source, after, 2**62, self.settings.partition_width
        ):
            return Window(source, planned.from_marker, planned.to_marker)
        return None

    def backfill(self, source: str, lo: int, hi: int) -> None:
        chunks = chunk_reader(self.jm, source, self.settings.chunk_size)
        for planned in backfill_windows(chunks, source, lo, hi, self.settings.partition_width):
            self.write(self.plan(Window(source, planned.from_marker, planned.to_marker)))

    def backfill_all(self, source: str) -> None:
        lowest, highest = engine_marker_bounds(self.jm, source)
        if lowest is not None and highest is not None:
            self.backfill(source, min(int(lowest), 0) - 1, int(highest))

    # -- the state --
    def state(self) -> dict[str, list]:
        """The target state (R22): our tables' current content, times included, minus what
        legitimately records history (withdrawn audit rows, resolved failures, failures'
        attempts, write times, rows processed that the shop has since deleted)."""
        queries = {
            self.logs: {
                "job_operations": "SELECT job_operation_id, completed_at, completed_by, source_id,"
                " status, notes FROM job_operations",
                "imposition_operations": "SELECT imposition_operation_id, completed_at,"
                " completed_by, source_id, status, notes FROM imposition_operations",
            },
            self.jm: {
                "jobs": "SELECT job_id, operations::text FROM jobs",
                "job_operation_state": "SELECT job_id, operation, value, status, version_tag,"
                " precedence, event_time, source_type, source_id, notes FROM job_operation_state",
                # R25: what a reader of the change stream must hold
                "job_version_state": "SELECT job_id, version_tag, operation, status,"
                " printed_count, aborted_count, total_count, notes, event_time, source_type,"
                " source_id FROM job_version_state",
                "job_print_state": "SELECT job_id, version_tag, status, printed_count,"
                " aborted_count, total_count, highest, notes, event_time, source_id"
                " FROM job_print_state",
                "audit": "SELECT source_type, source_id, marker, job_id, version_tag, operation,"
                " status, printed_count, aborted_count, total_count, applied, notes,"
                " evidence_notes, event_time FROM job_status_updates WHERE withdrawn_at IS NULL",
                "imposition_attributions": "SELECT source_type, source_id, imposition_id,"
                " operation, status, event_time, evidence_notes FROM imposition_status_updates"
                " WHERE withdrawn_at IS NULL",
                # R22: the open failures equal a from-scratch run's; resolved ones are history
                "failures": "SELECT source_type, source_id, reason, subject"
                " FROM processing_failures WHERE resolved_at IS NULL",
                "processed": "SELECT source_type, source_id, marker FROM processed_source_rows r"
                f" WHERE (r.source_type = '{PRINT_OS}' AND EXISTS (SELECT 1 FROM \"print OS\" p"
                " WHERE p.id = r.source_id))"
                f" OR (r.source_type = '{SCANNER}' AND EXISTS (SELECT 1 FROM scanned_codes s"
                " WHERE s.scan_id = r.source_id))",
                "markers": "SELECT marker_type, last_processed_id FROM processing_markers",
            },
        }
        state = {}
        for engine, tables in queries.items():
            with engine.connect() as c:
                for name, sql in tables.items():
                    state[name] = sorted(repr(tuple(r)) for r in c.execute(sa.text(sql)))
        return state

    # -- the read surfaces --
    def surface_problems(self, label: str) -> list[str]:
        """What `read_job_status` and `read_jobs` answer against an independent reading of the
        state tables, on trimmed ids (R4) and normalised operation names (R7, R8)."""
        trim_ = f"btrim(job_id, {TRIM_SQL})"
        with self.jm.connect() as c:
            jobs: dict[str, object] = {}
            listed_twice = []
            for job_id, operations in c.execute(sa.text(f"SELECT {trim_}, operations FROM jobs")):
                if job_id in jobs:
                    listed_twice.append(job_id)  # the shop holds two spellings: not ours to judge
                jobs[job_id] = operations
            states = c.execute(
                sa.text(
                    f"SELECT {trim_}, operation, status, btrim(version_tag, {TRIM_SQL})"
                    " FROM job_operation_state"
                )
            ).all()
            prints = c.execute(
                sa.text(
                    f"SELECT {trim_}, btrim(version_tag, {TRIM_SQL}), printed_count,"
                    " aborted_count, total_count FROM job_print_state"
                )
            ).all()
            audited = set(
                c.execute(sa.text(f"SELECT DISTINCT {trim_} FROM job_status_updates")).scalars()
            )
        with self.logs.connect() as c:
            op_rows = c.execute(
                sa.text(
                    f"SELECT btrim(o.job_id, {TRIM_SQL}), btrim(o.version_tag, {TRIM_SQL}),"
                    f" btrim(o.operation_id, {TRIM_SQL}), c.operation, o.status"
                    " FROM job_operations o LEFT JOIN operation_codes c"
                    f" ON btrim(c.operation_id, {TRIM_SQL}) = btrim(o.operation_id, {TRIM_SQL})"
                )
            ).all()
        problems: list[str] = []

        def differ(what: str, expected: object, got: object) -> None:
            if expected != got:
                problems.append(
                    abbreviate(f"{label}: {what}: expected {expected!r}, got {got!r}")[:600]
                )

        def flags(value: object) -> object:
            return value if isinstance(value, dict) else {}

        state_ids = {s[0] for s in states}
        known = set(jobs) | state_ids | audited
        for job in sorted(known):
            try:
                answer = read_job_status(self.jm, self.logs, job, limit=1000)
            except Exception as err:
                problems.append(f"{label}: {_raised(f'read_job_status({job!r})', err)}")
                continue
            what = f"read_job_status({job!r})"
            if answer is None:
                differ(what, "a status", None)
                continue
            expected_ops = sorted(
                (v, code, normalise(name), status)
                for j, v, code, name, status in op_rows
                if j == job
            )
            got_ops = sorted(
                (
                    trim(str(v["version_tag"])),
                    trim(str(op["operation_id"])),
                    normalise(op["operation"]),
                    op["status"],
                )
                for v in answer["versions"]
                for op in v["operations"]
            )
            differ(f"{what} operations", expected_ops, got_ops)
            versions = {v for _, v, *_ in (r for r in op_rows if r[0] == job)} | {
                p[1] for p in prints if p[0] == job
            }
            print_status = {v: None for v in versions}
            for _, v, _, name, status in (r for r in op_rows if r[0] == job):
                if normalise(name) == "print":
                    print_status[v] = status
            differ(
                f"{what} print status per version",
                print_status,
                {trim(str(v["version_tag"])): v["status"] for v in answer["versions"]},
            )
            differ(
                f"{what} print counts",
                sorted(tuple(p[1:]) for p in prints if p[0] == job),
                sorted(
                    (trim(str(v["version_tag"])), v["printed"], v["aborted"], v["total"])
                    for v in answer["versions"]
                    if "printed" in v
                ),
            )
            differ(f"{what} in_jobs_table", job in jobs, answer["in_jobs_table"])
            differ(f"{what} jobs.operations", flags(jobs.get(job)), flags(answer["current_status"]))
        try:
            with self.jm.connect() as c:
                listed = read_jobs(c, JobFilter(), "", 100_000)
                by_status = {
                    status: read_jobs(c, JobFilter(status=status), "", 100_000)
                    for status in JOB_STATUSES
                }
        except Exception as err:
            return [*problems, f"{label}: {_raised('read_jobs', err)}"]
        ids = [trim(x["job_id"]) for x in listed]
        differ(
            "read_jobs: jobs listed more than once",
            [],
            sorted({i for i in ids if ids.count(i) > 1}),
        )
        differ("read_jobs: jobs listed", sorted(set(jobs) | state_ids), sorted(set(ids)))
        for item in listed:
            job = trim(item["job_id"])
            differ(
                f"read_jobs {job!r} jobs.operations",
                flags(jobs.get(job)),
                flags(item["current_status"]),
            )
            differ(
                f"read_jobs {job!r} operations",
                sorted((normalise(o), s, v) for j, o, s, v in states if j == job),
                sorted(
                    (normalise(o["operation"]), o["status"], trim(o["version_tag"] or ""))
                    for o in item["operations"]
                ),
            )
        printed = {j: s for j, o, s, _ in states if normalise(o) == "print" and s is not None}
        for status, answer in by_status.items():
            expected = (
                {j for j in jobs if j not in printed}
                if status == PENDING
                else {j for j, s in printed.items() if s == status}
            )
            got = [trim(x["job_id"]) for x in answer]
            differ(f"read_jobs(status={status!r})", sorted(expected), sorted(got))
        return problems


MARKER_TYPES = {PRINT_OS: "print_os", SCANNER: "scanned_codes"}


def _shop_values(data: ShopData, table: str) -> dict:
    return data.job_ops if table == "job_operations" else data.imposition_ops


def _insert_op_rows(
    c: sa.Connection, data: ShopData, table: str, keys: list[tuple], conflict: bool
) -> None:
    """The shop's `*_operations` rows for ``keys`` with today's values, ids spelled as the shop
    spells them (R4 padding)."""
    values = _shop_values(data, table)
    if table == "job_operations":
        insert = (
            "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id,"
            " status) VALUES (:id, :j, :v, :o, :s)"
        )
        rows = [
            {
                "id": job_operation_id(job, version, code),
                "j": data.raw("job_operations", job),
                "v": version,
                "o": data.raw("operation_id", code),
                "s": values[(job, version, code)],
            }
            for job, version, code in keys
        ]
    else:
        insert = (
            "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
            " operation_id, status) VALUES (:id, :i, :o, :s)"
        )
        rows = [
            {
                "id": imposition_operation_id(imp, code),
                "i": data.raw("imposition_operations", imp),
                "o": data.raw("operation_id", code),
                "s": values[(imp, code)],
            }
            for imp, code in keys
        ]
    if rows:
        c.execute(sa.text(insert + (" ON CONFLICT DO NOTHING" if conflict else "")), rows)


@contextmanager
def open_env(urls: DatabaseUrls, reference: bool = False) -> Iterator[Env]:
    """Engines on a migrated database pair, with small windows and immediate retries so that a
    few rows make many windows and retries (shared by the tests and fault scenario 9). A
    ``reference`` Env (the from-scratch run of the per-step check) takes everything in one
    window per source."""
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
    tuned = load_settings().model_copy(
        update={
            "chunk_size": 10_000 if reference else 3,
            "retry_interval_seconds": 0,
            "late_row_lookback": 4,
        }
    )
    env = Env(jm, logs, tuned)
    if not reference:  # a subscriber to every operation, whose deliveries are folded (R25)
        with jm.begin() as c:
            env.subscription_id = c.execute(
                sa.text(
                    "INSERT INTO webhook_subscriptions (url, secret)"
                    " VALUES ('http://127.0.0.1:9/fold', 'convergence') RETURNING subscription_id"
                )
            ).scalar_one()
    try:
        yield env
    finally:
        jm.dispose()
        logs.dispose()


# ----- running a schedule -------------------------------------------------------------------
@dataclass
class _Run:
    """One schedule being carried out on ``env``, checked against ``reference`` as it goes."""

    env: Env
    reference: Env
    data: ShopData
    problems: list[str]
    pending: list[tuple[str, int]] = field(default_factory=list)
    # why the state may differ from a from-scratch run until a backfill of both sources (R22b,
    # R22a's exception); None: no reason
    due: str | None = None
    latest_scan_seen: datetime | None = None
    # print rows a scan saw committed before they were processed (R6 reads committed rows)
    seen_unprocessed: set[int] = field(default_factory=set)
    # sources whose write was killed part-way: a run still writing until the source is drained
    # or backfilled (R18: re-running repairs it)
    crashed: set[str] = field(default_factory=set)
    # the read surfaces' disagreements, from the first step that had any (the schedule goes on)
    surface: list[str] = field(default_factory=list)
    reference_key: str | None = None
    reference_state: dict | None = None
    checked: int = 0

    def print_time(self, row_id: int) -> datetime | None:
        row = next((r for r in self.data.prints if r[0] == row_id), None)
        return None if row is None else (row[4] or row[5])

    def commit(self, n: int) -> None:
        batch, self.pending[:] = self.pending[:n], self.pending[n:]
        for source, row_id in batch:
            at = self.print_time(row_id) if source == PRINT_OS else None
            if self.latest_scan_seen and at is not None and at <= self.latest_scan_seen:
                self.due = self.due or f"print row {row_id} committed behind a scan it precedes"
        self.env.commit(self.data, batch)

    def scanned(self, source: str) -> None:
        """Book-keeping before ``source`` is processed: which scans (may) have been seen, and
        which committed print rows they saw unprocessed."""
        if source != SCANNER:
            return
        times = {s[0]: s[2] for s in self.data.scans}
        seen = [times[i] for s, i in self.env.committed if s == SCANNER and i in times]
        if self.latest_scan_seen:
            seen.append(self.latest_scan_seen)
        self.latest_scan_seen = max(seen, default=None)
        committed = {i for s, i in self.env.committed if s == PRINT_OS}
        processed = {i for s, i in self.env.processed() if s == PRINT_OS}
        self.seen_unprocessed |= committed - processed

    def split_rows(self) -> list[tuple]:
        """The print rows of the job printed across two impositions (shops()), as they stand
        (a correction may have moved or deleted one)."""
        return [r for r in self.data.prints if r[0] in self.data.split]

    def split_marker(self) -> int | None:
        """The marker of the lower event of the split job, when both its events are committed
        and not processed yet: a window ending there sees one of them only."""
        done = self.env.processed()
        waiting = [
            r
            for r in self.split_rows()
            if (PRINT_OS, r[0]) in self.env.committed
            and (PRINT_OS, r[0]) not in done
            and r[3] is not None
        ]
        if len(waiting) < 2:
            return None
        return min(r[3] for r in waiting)

    def commit_split_job(self) -> None:
        """The shop commits the split job's events now (a commit order like any other), so a
        window can end between them while both wait."""
        split = {(PRINT_OS, r[0]) for r in self.split_rows()}
        first = [row for row in self.pending if row in split]
        if first:
            self.pending[:] = first + [row for row in self.pending if row not in split]
            self.commit(len(first))

    def exempt(self, why: str) -> None:
        self.due = self.due or why

    def backfill_all(self) -> None:
        for source in SOURCE_NAMES:  # print rows first: the scans then see them all (R6)
            self.scanned(source)
            self.env.backfill_all(source)
            self.crashed.discard(source)
        self.due = None

    def drain_both(self) -> None:
        for source in SOURCE_NAMES:
            self.scanned(source)
            self.env.drain(source)
            self.crashed.discard(source)

    def step(self, step: Step) -> None:
        env, data, kind = self.env, self.data, step[0]
        if kind == "commit":
            self.commit(step[1])
        elif kind == "run":
            self.scanned(step[1])
            env.run(step[1], step[2])
        elif kind == "backfill":
            self.scanned(step[1])
            env.backfill(step[1], step[2], step[3])
        elif kind == "overlap":  # R24: a plan made, newer rows land and are processed, it writes
            _, first, lo, hi, second, newer = step
            self.scanned(first)
            stale = env.plan(Window(first, lo, hi))
            self.commit(newer)
            self.scanned(second)
            env.run(second, 3)
            env.write(stale)
            # R24: once what is committed is processed, the stale plan's write is what a plan
            # made now would have written: re-running its window changes nothing.
            self.drain_both()
            written = env.state()
            env.write(env.plan(Window(first, lo, hi)))
            self.problems += _diff(
                f"stale plan of {first} ({lo}, {hi}] wrote", env.state(), written
            )
        elif kind == "race":  # R19/R24: two processors of one source plan the same window
            _, source, chunk, newer = step
            self.scanned(source)
            window = env.next_window(source, chunk)
            if window is not None:
                stale = env.plan(window, chunk)
                self.commit(newer)
                env.run(source, chunk + 1)
                env.write(stale)
                self.drain_both()
                written = env.state()
                env.write(env.plan(window, chunk))
                self.problems += _diff(f"racing plan of {window.label} wrote", env.state(), written)
        elif kind == "crash":
            self.scanned(step[1])
            if env.run(step[1], 2, crash_at=step[2]):
                self.crashed.add(step[1])
        elif kind == "correct":
            _CORRECT[step[1]](data, step[2])
            env.write_reference(data)
            self.exempt(f"reference data corrected ({step[1]})")
        elif kind == "rerun":  # one window below rows already processed (the audit's finding 1)
            _, source, lo, width = step
            marker = env.marker(source)
            if marker > 1:
                hi = min(lo + width, marker - 1)
                self.scanned(source)
                env.write(env.plan(Window(source, min(lo, hi - 1), hi)))
        elif kind == "ahead":  # R22a: rows processed above the marker (the audit's finding 1):
            # the next window fails, the one queued behind it runs, then the failed one again
            _, source, chunk = step
            if source == PRINT_OS:
                self.commit_split_job()
            self.scanned(source)
            failed = env.next_window(source, 1)  # one row: a job's rows split most often
            split = self.split_marker() if source == PRINT_OS else None
            if failed is not None and split is not None and split > failed.from_marker:
                failed = Window(source, failed.from_marker, split)  # ends between a job's events
            if failed is not None:
                # every committed row past it runs behind it (a long queue, `chunk` ignored)
                behind = env.window_after(source, failed.to_marker, 100)
                if behind is not None:
                    env.write(env.plan(behind, 100))
                    env.write(env.plan(failed, 1))
        elif kind == "delete":
            if not any(s == step[1] for s, _ in env.processed()):
                self.scanned(step[1])  # a row with effects to withdraw (R22b)
                env.drain(step[1])
            if env.delete_row(data, step[1], step[2]):
                self.exempt(f"a {step[1]} row deleted")
        elif kind == "correct_row":
            if env.correct_row(data, *step[1:]):
                self.exempt(f"a {step[1]} row corrected")
        elif kind == "readd":
            if env.readd(data, step[1], step[2], step[3]):
                self.exempt(f"a {step[1]} row deleted and added again")
        elif kind == "overwrite":
            if env.overwrite(data, step[1], step[2], step[3]):
                self.exempt(f"the shop wrote over a {step[1]} row")
        elif kind == "backfill_all":
            self.backfill_all()
        else:
            raise ValueError(f"unknown step {kind}")

    def check(self, label: str) -> list[str]:
        """R22a at this quiescent point (unless exempt); the read surfaces go to ``surface``."""
        if not self.surface:
            self.surface += self.env.surface_problems(label)
        # R25 holds at every point where no run is writing, exempt or not
        problems = fold_problems(self.env.jm, self.env.subscription_id, label)
        if self.due is not None or self.crashed:
            return problems
        committed = {i for s, i in self.env.committed if s == PRINT_OS}
        processed = {i for s, i in self.env.processed() if s == PRINT_OS}
        if self.seen_unprocessed & (committed - processed):
            return problems  # a scan saw a print row the reference cannot hold yet (R6)
        self.seen_unprocessed &= committed - processed
        expected = self.scratch()
        self.checked += 1
        actual = {k: v for k, v in self.env.state().items() if k not in PER_STEP_SKIP}
        return problems + _diff(
            f"{label}: differs from scratch over the rows processed", expected, actual
        )

    def scratch(self) -> dict:
        """The state of one from-scratch run over the rows processed so far (R22a), on the
        reference databases; the same rows and data give the same state, so it is reused."""
        rows = self.env.processed_rows()
        key = self.data.fingerprint() + repr(rows)
        if key != self.reference_key:
            reference = self.reference
            reference.reset()
            reference.write_reference(self.data)
            reference.insert_rows(rows)
            try:
                for source in SOURCE_NAMES:  # print rows first, as R22a's run would
                    reference.drain(source)
            except Raised as err:
                raise Raised(f"from-scratch reference: {err}") from err
            state = reference.state()
            self.reference_key = key
            self.reference_state = {k: v for k, v in state.items() if k not in PER_STEP_SKIP}
        return self.reference_state


def run_schedule(
    env: Env, reference: Env, data: ShopData, steps: list[Step], problems: list[str]
) -> str | None:
    """Carry out a schedule, checking after every step, then commit the rest and drain; returns
    why a backfill is due (R22b, or R22a's exception), None if none is. Differences go to
    ``problems``; the schedule stops at the first step whose state differs or that raised (the
    read surfaces' disagreements of the first step that had any come last)."""
    for each in (env, reference):
        each.settings = each.settings.model_copy(
            update={"retry_interval_seconds": data.retry_interval}
        )
    env.reset()
    env.write_reference(data)
    run = _Run(env, reference, data, problems, pending=list(steps[0][1]))
    final = ("commit the rest and drain",)
    for index, step in enumerate([*steps[1:], final], start=1):
        label = f"step {index} {_short(step)}"
        try:
            if step is final:
                run.commit(len(run.pending))
                run.drain_both()
            else:
                run.step(step)
            problems += run.check(label)
        except Raised as err:
            problems.append(f"{label}: {err}")
        except Exception as err:  # the harness must report, not stop
            problems.append(abbreviate(f"{label}: raised {type(err).__name__}: {err}")[:400])
        if problems:
            break
    problems += run.surface
    return run.due


def check_schedule(env: Env, reference: Env, data: ShopData, steps: list[Step]) -> list[str]:
    """The differences from the property, as readable lines (empty: it holds)."""
    problems: list[str] = []
    due = run_schedule(env, reference, data, steps, problems)
    if defect_class(problems) not in (None, SURFACE):
        return problems
    try:
        if due:
            for source in SOURCE_NAMES:
                env.backfill_all(source)
        reached = env.state()
        for source in SOURCE_NAMES:  # re-running anything changes nothing (R17, R23)
            env.backfill_all(source)
            env.drain(source)
        if env.state() != reached:
            problems += _diff("re-run changed", reached, env.state())
        env.forget_processing(data)
        for source in SOURCE_NAMES:
            env.drain(source)
        scratch = env.state()
        if env.deleted:  # R21: a marker never moves back, so it may stay at a deleted row's
            problems += _markers_behind(scratch.pop("markers"), reached.pop("markers"))
        problems += _diff("differs from scratch", scratch, reached)
    except Raised as err:
        problems.append(f"at the end: {err}")
    return problems


def _markers_behind(scratch: list, reached: list) -> list[str]:
    """A marker below the from-scratch run's (rows deleted since may leave it above, R21)."""
    behind = dict(map(ast.literal_eval, scratch))
    lines = []
    for marker_type, value in map(ast.literal_eval, reached):
        if value < behind.get(marker_type, value):
            lines.append(
                f"differs from scratch: markers: {marker_type} at {value}, scratch at"
                f" {behind[marker_type]}"
            )
    return lines


# Defect classes of a problem list, most severe first; the test raises each from its own line,
# so one Hypothesis run reports (and shrinks) one example per class it found.
RAISED, STEP_STATE, END_STATE, SURFACE = "raised", "step state", "end state", "read surface"
FOLD = "change stream"


def defect_class(problems: list[str]) -> str | None:
    """Which kind of defect ``problems`` show (None: none): a plan, write or read that raised
    (R20), a state unequal to a from-scratch run after some step (R22a/b) or at the end, or a
    read surface that disagrees with the state tables (R4, R7, R8)."""
    if any(" raised " in p for p in problems):
        return RAISED
    state = [
        p
        for p in problems
        if "read_job_status" not in p and "read_jobs" not in p and _FOLDING not in p
    ]
    if any(not p.startswith(_AT_THE_END) for p in state):
        return STEP_STATE
    if state:
        return END_STATE
    if any(_FOLDING in p for p in problems):
        return FOLD
    return SURFACE if problems else None


_FOLDING = "folding the"

_AT_THE_END = ("differs from scratch:", "re-run changed:", "at the end:")


def _diff(label: str, expected: dict, actual: dict) -> list[str]:
    lines = []
    for table in expected:
        missing = sorted(set(expected[table]) - set(actual[table]))
        extra = sorted(set(actual[table]) - set(expected[table]))
        for row in missing:
            lines.append(abbreviate(f"{label}: {table}: expected {row}"))
        for row in extra:
            lines.append(abbreviate(f"{label}: {table}: got      {row}"))
    return lines
