"""Random small shops and random schedules of processing, for the convergence property (R22).

A schedule commits the shop's source rows in a random order, processes random windows of either
source, backfills random ranges, lets a stale plan write after a newer window landed (R24),
crashes writes at the crash points (R18) and corrects reference data. The property: once every
row is processed (and, after corrections or a late print row that precedes a processed scan, a
backfill), the target state equals a from-scratch run over the final data, and re-running
anything changes nothing, times included (R23). Used by test_convergence_property.py (small
budget) and by `make faults` scenario 9 (large budget).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from hypothesis import strategies as st

from jobstatus_dagster.config import Settings, load_settings
from jobstatus_dagster.core.plan import PRINT_OS, SCANNER, UpdatePlan, Window
from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.io import writer
from jobstatus_dagster.io.sources import chunk_reader, engine_marker_bounds, source_backlog
from jobstatus_dagster.io.writer import write_plan
from jobstatus_dagster.pipeline.ops import load_window_rows
from jobstatus_dagster.pipeline.print_os import plan_print
from jobstatus_dagster.pipeline.scanner import plan_scans
from jobstatus_dagster.pipeline.windows import backfill_windows, plan_next_run
from jobstatus_dagster.source import SOURCE_NAMES

T0 = datetime(2026, 11, 1, 8, 0, 0)
PLANNERS: dict[str, Callable[..., UpdatePlan]] = {PRINT_OS: plan_print, SCANNER: plan_scans}
OPERATION_IDS = {"print": "op001", "coating": "op003", "kiss_cut": "op006", "backscore": "op009"}
CRASH_POINTS = ("after_logs_commit", "before_jobmanager_commit")


# ----- the shop ------------------------------------------------------------------------------
@dataclass
class ShopData:
    """Everything in the shop's tables; corrections mutate it, so it is always the final data."""

    jobs: list[str]  # job ids; every job has version "1", some also "2"
    in_jobs: set[str]
    files: dict[str, list[str]]  # imposition -> file ids
    runlists: dict[str, list[str]]  # runlist -> impositions
    job_ops: dict[tuple[str, str, str], str | None]  # (job, version, op id) -> initial status
    imposition_ops: dict[tuple[str, str], str | None]
    codes: dict[str, str | None]  # operation name -> code
    prints: list[
        tuple[int, str, str, int, datetime | None, datetime]
    ]  # id, name, status, marker, time, created
    scans: list[tuple[int, str, datetime, str]]  # id, code, time, operations json


def _time(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@st.composite
def shops(draw: st.DrawFn, max_events: int = 8) -> ShopData:
    n_jobs = draw(st.integers(2, 4))
    jobs = [f"{100 + i}_{200 + i}" for i in range(n_jobs)]
    versions = {
        j: ["1", "2"] if draw(st.booleans()) and i == 0 else ["1"] for i, j in enumerate(jobs)
    }
    impositions = [f"IMP-{i}" for i in range(draw(st.integers(2, 4)))]
    files: dict[str, list[str]] = {}
    for imp in impositions:
        chosen = draw(st.lists(st.sampled_from(jobs), min_size=1, max_size=3))
        files[imp] = [
            f"FILE_{draw(st.sampled_from(versions[j]))}_Labex_{j}_{k}" for k, j in enumerate(chosen)
        ]
    runlists = {
        f"RL-{i}": draw(st.lists(st.sampled_from(impositions), min_size=1, max_size=3, unique=True))
        for i in range(draw(st.integers(0, 2)))
    }
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
        for code in OPERATION_IDS.values()
        if draw(st.integers(0, 4)) > 0
    }
    in_jobs = {j for j in jobs if draw(st.integers(0, 5)) > 0}
    names = [*impositions, "IMP-unmapped"]
    prints = []
    for i in range(draw(st.integers(0, max_events))):
        minutes = draw(st.integers(0, 40))
        no_time = draw(st.integers(0, 9)) == 0
        prints.append(
            (
                i + 1,
                draw(st.sampled_from(names)),
                draw(st.sampled_from(["PRINTED", "PRINTED", "ABORTED", "printed", "JAMMED"])),
                draw(st.integers(1, 12)),
                None if no_time else _time(minutes),
                _time(minutes + 1),
            )
        )
    codes = [f"{j}_{v}" for j in jobs for v in versions[j]] + list(runlists) + ["junk"]
    scans = []
    for i in range(draw(st.integers(0, max_events))):
        ops = draw(
            st.lists(
                st.sampled_from(["coating", "kiss_cut", "backscore", "print"]),
                min_size=1,
                max_size=2,
                unique=True,
            )
        )
        shape = draw(st.sampled_from(["dict", "list"]))
        payload = {o: True for o in ops} if shape == "dict" else ops
        scans.append(
            (
                i + 1,
                draw(st.sampled_from(codes)),
                _time(draw(st.integers(0, 40))),
                json.dumps(payload),
            )
        )
    return ShopData(
        jobs=jobs,
        in_jobs=in_jobs,
        files=files,
        runlists=runlists,
        job_ops=job_ops,
        imposition_ops=imposition_ops,
        codes={**OPERATION_IDS, "backscore": None},
        prints=prints,
        scans=scans,
    )


# ----- schedules ----------------------------------------------------------------------------
Step = tuple


@st.composite
def schedules(draw: st.DrawFn, data: ShopData, max_steps: int = 10) -> list[Step]:
    """Steps over the shop; commits are indexes into a random permutation of all source rows."""
    rows = [(PRINT_OS, r[0]) for r in data.prints] + [(SCANNER, s[0]) for s in data.scans]
    order = draw(st.permutations(rows))
    steps: list[Step] = [("order", order)]
    source = st.sampled_from(SOURCE_NAMES)
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(
            st.sampled_from(
                [
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
                ]
            )
        )
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
        else:
            steps.append(("correct", draw(st.sampled_from(CORRECTIONS)), draw(st.integers(0, 99))))
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
)


class Crash(RuntimeError):
    """A write stopped at a crash point, as a kill would stop it."""


@dataclass
class Env:
    jm: sa.Engine
    logs: sa.Engine
    settings: Settings
    committed: set[tuple[str, int]] = field(default_factory=set)
    runs: int = 0

    # -- data --
    def write_reference(self, data: ShopData) -> None:
        """The reference tables as ``data`` says, keeping what jobstatus wrote on the op rows."""
        with self.logs.begin() as c:
            c.execute(sa.text("DELETE FROM imposition_file_mapping"))
            c.execute(sa.text("DELETE FROM production_planner_paths"))
            references = {
                "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES (:i, :f)": [
                    {"i": i, "f": f} for i, fs in data.files.items() for f in fs
                ],
                "INSERT INTO production_planner_paths (runlist_id, imposition_id)"
                " VALUES (:r, :i)": [
                    {"r": r, "i": i} for r, imps in data.runlists.items() for i in imps
                ],
            }
            for insert, rows in references.items():
                if rows:
                    c.execute(sa.text(insert), rows)
            for name, code in data.codes.items():
                c.execute(
                    sa.text(
                        "INSERT INTO operation_codes (operation, operation_id) VALUES (:n, :c)"
                        " ON CONFLICT (operation) DO UPDATE SET operation_id = excluded.operation_id"
                    ),
                    {"n": name, "c": code},
                )
            for (job, version, code), status in data.job_ops.items():
                c.execute(
                    sa.text(
                        "INSERT INTO job_operations (job_operation_id, job_id, version_tag,"
                        " operation_id, status) VALUES (:id, :j, :v, :o, :s)"
                        " ON CONFLICT DO NOTHING"
                    ),
                    {
                        "id": f"{job}:{version}:{code}",
                        "j": job,
                        "v": version,
                        "o": code,
                        "s": status,
                    },
                )
            for (imp, code), status in data.imposition_ops.items():
                c.execute(
                    sa.text(
                        "INSERT INTO imposition_operations (imposition_operation_id,"
                        " imposition_id, operation_id, status) VALUES (:id, :i, :o, :s)"
                        " ON CONFLICT DO NOTHING"
                    ),
                    {"id": f"{imp}:{code}", "i": imp, "o": code, "s": status},
                )
        with self.jm.begin() as c:
            for job in data.in_jobs:
                c.execute(
                    sa.text(
                        "INSERT INTO jobs (job_id, operations) VALUES (:j, '{\"legacy\": true}')"
                        " ON CONFLICT DO NOTHING"
                    ),
                    {"j": job},
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

    @staticmethod
    def _reset_markers(c: sa.Connection) -> None:
        c.execute(
            sa.text(
                "UPDATE processing_markers SET last_processed_id = 0, sweep_marker = NULL,"
                " sweep_source_id = NULL"
            )
        )

    def forget_processing(self, data: ShopData) -> None:
        """Back to before jobstatus ran, on the same data: for the from-scratch reference."""
        with self.jm.begin() as c:
            c.execute(sa.text(f"TRUNCATE {', '.join(_OUR_JM_TABLES)}"))
            c.execute(sa.text("UPDATE jobs SET operations = '{\"legacy\": true}'"))
            self._reset_markers(c)
        with self.logs.begin() as c:
            c.execute(
                sa.text("TRUNCATE job_operations, imposition_operations, operation_row_originals")
            )
        self.write_reference(data)

    # -- processing --
    def plan(self, window: Window, chunk: int | None = None) -> UpdatePlan:
        settings = (
            self.settings
            if chunk is None
            else self.settings.model_copy(update={"chunk_size": chunk})
        )
        loaded = load_window_rows(self.jm, window, settings)
        return PLANNERS[window.source_type](loaded, self.jm, self.logs, settings)

    def write(self, plan: UpdatePlan, crash_at: str | None = None) -> None:
        self.runs += 1
        if crash_at is None:
            write_plan(self.jm, self.logs, plan, f"run-{self.runs}")
            return

        def crash(name: str) -> None:
            if name == crash_at:
                raise Crash(name)

        saved, writer.crash_point = writer.crash_point, crash
        try:
            write_plan(self.jm, self.logs, plan, f"run-{self.runs}")
        except Crash:
            pass
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
        legitimately records history (withdrawn audit rows, failures' attempts, write times)."""
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
                "job_print_state": "SELECT job_id, version_tag, status, printed_count,"
                " aborted_count, total_count, highest, notes, event_time, source_id"
                " FROM job_print_state",
                "audit": "SELECT source_type, source_id, marker, job_id, version_tag, operation,"
                " status, printed_count, aborted_count, total_count, applied, notes,"
                " evidence_notes, event_time FROM job_status_updates WHERE withdrawn_at IS NULL",
                "imposition_attributions": "SELECT source_type, source_id, imposition_id,"
                " operation, status, event_time, evidence_notes FROM imposition_status_updates"
                " WHERE withdrawn_at IS NULL",
                "processed": "SELECT source_type, source_id, marker FROM processed_source_rows",
                "markers": "SELECT marker_type, last_processed_id FROM processing_markers",
            },
        }
        state = {}
        for engine, tables in queries.items():
            with engine.connect() as c:
                for name, sql in tables.items():
                    state[name] = sorted(repr(tuple(r)) for r in c.execute(sa.text(sql)))
        return state


@contextmanager
def open_env(urls: DatabaseUrls) -> Iterator[Env]:
    """Engines on a migrated database pair, with small windows and immediate retries so that a
    few rows make many windows and retries (shared by the tests and fault scenario 9)."""
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
    tuned = load_settings().model_copy(
        update={"chunk_size": 3, "retry_interval_seconds": 0, "late_row_lookback": 4}
    )
    try:
        yield Env(jm, logs, tuned)
    finally:
        jm.dispose()
        logs.dispose()


def run_schedule(env: Env, data: ShopData, steps: list[Step], problems: list[str]) -> bool:
    """Carry out a schedule, then commit the rest and drain; True when a backfill is due (R22b,
    or R22a's exception: a print row committed after a scan it precedes was processed).
    Differences seen on the way (a stale plan that wrote other than a fresh one) go to
    ``problems``."""
    env.reset()
    env.write_reference(data)
    order: list[tuple[str, int]] = list(steps[0][1])
    pending = list(order)
    due = False
    latest_scan_seen: datetime | None = None
    print_times = {r[0]: (r[4] or r[5]) for r in data.prints}
    scan_times = {s[0]: s[2] for s in data.scans}

    def commit(n: int) -> None:
        nonlocal due
        batch, pending[:] = pending[:n], pending[n:]
        for source, row_id in batch:
            if (
                source == PRINT_OS
                and latest_scan_seen
                and print_times[row_id] is not None
                and print_times[row_id] <= latest_scan_seen
            ):
                due = True
        env.commit(data, batch)

    def scanned(source: str) -> None:
        nonlocal latest_scan_seen
        if source == SCANNER:
            seen = [scan_times[i] for s, i in env.committed if s == SCANNER]
            latest_scan_seen = max(
                [*seen, *([latest_scan_seen] if latest_scan_seen else [])], default=None
            )

    for step in steps[1:]:
        kind = step[0]
        if kind == "commit":
            commit(step[1])
        elif kind == "run":
            scanned(step[1])
            env.run(step[1], step[2])
        elif kind == "backfill":
            scanned(step[1])
            env.backfill(step[1], step[2], step[3])
        elif kind == "overlap":  # R24: a plan made, newer rows land and are processed, it writes
            _, first, lo, hi, second, newer = step
            scanned(first)
            stale = env.plan(Window(first, lo, hi))
            commit(newer)
            scanned(second)
            env.run(second, 3)
            env.write(stale)
            # R24: once what is committed is processed, the stale plan's write is what a plan
            # made now would have written: re-running its window changes nothing.
            for source in SOURCE_NAMES:
                scanned(source)
                env.drain(source)
            written = env.state()
            env.write(env.plan(Window(first, lo, hi)))
            problems += _diff(f"stale plan of {first} ({lo}, {hi}] wrote", env.state(), written)
        elif kind == "race":  # R19/R24: two processors of one source plan the same window
            _, source, chunk, newer = step
            scanned(source)
            window = env.next_window(source, chunk)
            if window is not None:
                stale = env.plan(window, chunk)
                commit(newer)
                env.run(source, chunk + 1)
                env.write(stale)
                for each in SOURCE_NAMES:
                    scanned(each)
                    env.drain(each)
                written = env.state()
                env.write(env.plan(window, chunk))
                problems += _diff(f"racing plan of {window.label} wrote", env.state(), written)
        elif kind == "crash":
            scanned(step[1])
            env.run(step[1], 2, crash_at=step[2])
        else:
            _CORRECT[step[1]](data, step[2])
            env.write_reference(data)
            due = True
    commit(len(pending))
    for source in SOURCE_NAMES:
        scanned(source)
        env.drain(source)
    return due


def check_schedule(env: Env, data: ShopData, steps: list[Step]) -> list[str]:
    """The differences from the property, as readable lines (empty: it holds)."""
    problems: list[str] = []
    due = run_schedule(env, data, steps, problems)
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
    problems += _diff("differs from scratch", env.state(), reached)
    return problems


def _diff(label: str, expected: dict, actual: dict) -> list[str]:
    lines = []
    for table in expected:
        missing = sorted(set(expected[table]) - set(actual[table]))
        extra = sorted(set(actual[table]) - set(expected[table]))
        for row in missing:
            lines.append(f"{label}: {table}: expected {row}")
        for row in extra:
            lines.append(f"{label}: {table}: got      {row}")
    return lines
