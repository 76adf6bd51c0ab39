"""A synthetic label print shop, for demos, load tests and the live-shop simulator.

The processor is only convincing against data shaped like the shop's: jobs reissued as new
versions, impositions that gang several jobs, reprints, runlists, a press history with aborts,
repeated lots and mixed-case statuses, scans in every JSON shape the scanners send (R7), and a
few rows of every malformed kind R20 names. Everything follows from one seed, times are
offsets from "three weeks ago", and rows are written with COPY, so scale 250 (50,000 jobs)
loads in seconds.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from psycopg import sql

from jobstatus_dagster.core.identifiers import parse_file_id

CUSTOMER = "Labex"
JOBS_PER_SCALE = 200
PRINT_EVENTS_PER_SCALE = 800  # well-formed "print OS" rows; the press reports every lot
SCANS_PER_SCALE = 400
MALFORMED_PER_SCALE = 3  # rows of each malformed kind (R20)
HISTORY = timedelta(days=21)
HISTORY_H = HISTORY / timedelta(hours=1)
FIRST_MARKER = 1000
PRINT_LAG_H = 60.0  # hours from planning an imposition to printing it
COPY_BATCH = 50_000

# Planned operations of every job version and imposition: print, coating, kiss_cut (R8 codes).
PLANNED_OPERATIONS = (("op001", 1), ("op003", 2), ("op006", 3))
MACHINES = ("coater-1", "kisscut-1", "backscore-1", "slitter-1")
MACHINE_CUM_WEIGHTS = (40, 70, 85, 100)
FILES_PER_VERSION, FILES_CUM_WEIGHTS = (1, 2, 3, 4, 5, 6), (15, 35, 60, 80, 92, 100)
JOBS_PER_IMPOSITION, JOBS_CUM_WEIGHTS = (1, 2, 3, 4), (30, 65, 87, 100)
MACHINE_OPERATION = {"kisscut-1": "kiss_cut", "backscore-1": "backscore", "slitter-1": "slitter"}
SPELLINGS = {
    "coating": ("coating", "Coating"),
    "kiss_cut": ("kiss_cut", "Kiss Cut", "kiss-cut"),
    "backscore": ("backscore", "Backscore"),
    "slitter": ("slitter", "Slitter"),
}
SCAN_METADATA = {
    (machine, grade): json.dumps({"camera": f"{machine}-cam", "grade": grade})
    for machine in MACHINES
    for grade in "ABC"
}
GOOD_SHAPES = ("dict", "list", "dicts", "wrapped")  # the four shapes of R7
UNKNOWN_OPERATIONS = ("laminate", "varnish", "foil")
BAD_FILE_IDS = ("FILE_X_Other_abc", "garbage.pdf", "FILE_2_Labex_12345")
UNKNOWN_STATUSES = ("PAUSED", "QUEUED", "ERROR")
PRESSES = ("Indigo 6K #1", "Indigo 6K #2", "Indigo 8K")
SUBSTRATES = ("PP white 60µ", "PE clear 85µ", "Paper semi-gloss 80g", "Metallised PET 50µ")
PRODUCTS = (
    "Wildflower Honey 250g",
    "Cold Brew Coffee 330ml",
    "Sea Salt Crisps 150g",
    "Lavender Soap 100g",
    "Organic Olive Oil 500ml",
    "Craft IPA 440ml",
    "Oat Drink 1L",
    "Chili Sauce 200ml",
    "Green Tea 20 bags",
    "Hand Cream 75ml",
    "Dog Treats 300g",
    "Sparkling Water 750ml",
)
LABEL_PARTS = ("front label", "back label", "neck label", "wrap-around", "promo sticker", "lid")

_OCCUPIED_JOBMANAGER = sa.text(
    """
    SELECT t.name FROM (VALUES
        ('jobs', EXISTS (SELECT 1 FROM jobs)),
        ('"print OS"', EXISTS (SELECT 1 FROM "print OS")),
        ('scanned_codes', EXISTS (SELECT 1 FROM scanned_codes))
    ) AS t(name, occupied) WHERE t.occupied
    """
)
_OCCUPIED_LOGS = sa.text(
    """
    SELECT t.name FROM (VALUES
        ('imposition_file_mapping', EXISTS (SELECT 1 FROM imposition_file_mapping)),
        ('production_planner_paths', EXISTS (SELECT 1 FROM production_planner_paths)),
        ('job_operations', EXISTS (SELECT 1 FROM job_operations)),
        ('imposition_operations', EXISTS (SELECT 1 FROM imposition_operations))
    ) AS t(name, occupied) WHERE t.occupied
    """
)
_MAPPING_ID_RANGE = sa.text("SELECT min(id), max(id) FROM imposition_file_mapping")
_MAPPING_AT = sa.text(
    "SELECT id, imposition_id, file_id FROM imposition_file_mapping WHERE id = ANY(:ids)"
)
_RUNLIST_ID_RANGE = sa.text("SELECT min(id), max(id) FROM production_planner_paths")
_RUNLIST_AT = sa.text("SELECT id, runlist_id FROM production_planner_paths WHERE id = ANY(:ids)")
_PRINTED_AMONG = sa.text(
    """SELECT DISTINCT name FROM "print OS" WHERE name = ANY(:names) AND upper(status) = 'PRINTED'"""
)
# Two simulators never hand out the same marker: the lock is taken before max() is read.
_LOCK_MARKERS = sa.text("SELECT pg_advisory_xact_lock(hashtext('jobstatus.demo.print_os'))")
_LAST_MARKER = sa.text("""SELECT COALESCE(max(marker), :first - 1) FROM "print OS" """)
PRINT_COLUMNS = ("name", "status", "marker", "job_name", "item_id", "job_complete_time")
PRINT_COLUMNS += ("copies", "payload")
_INSERT_PRINT = sa.text(
    """INSERT INTO "print OS" (name, status, marker, job_name, item_id, job_complete_time,
                               copies, payload)
       VALUES (:name, :status, :marker, :job_name, :item_id, :job_complete_time, :copies,
               CAST(:payload AS jsonb))"""
)
_INSERT_SCAN = sa.text(
    """INSERT INTO scanned_codes (code_text, scanned_at, machine_id, user_id, operations, metadata)
       VALUES (:code, :at, :machine, :user_id, CAST(:operations AS jsonb), CAST(:metadata AS jsonb))"""
)


@dataclass(frozen=True)
class DemoSummary:
    """What generate_shop wrote, in numbers."""

    scale: int
    seed: int
    jobs: int  # rows in jobs
    missing_jobs: int  # job ids of file ids deliberately absent from jobs (R16/R20)
    job_versions: int
    files: int
    file_mappings: int
    reprinted_files: int  # files held by two impositions
    impositions: int
    runlists: int
    job_operations: int
    missing_print_operations: int  # job versions without their op001 row (R16)
    imposition_operations: int
    print_events: int  # every "print OS" row, malformed ones included
    aborted_events: int
    malformed_print_rows: int  # unmapped imposition, unknown status, NULL name
    bad_file_ids: int  # mapping rows whose file id does not match R4
    scans: int
    unusable_scans: int  # unrecognised code, unknown operation or unusable JSON shape

    def line(self) -> str:
        return (
            f"demo shop (scale {self.scale}, seed {self.seed}): {self.jobs} jobs"
            f" (+{self.missing_jobs} missing), {self.job_versions} versions, {self.files} files"
            f" in {self.impositions} impositions ({self.reprinted_files} reprinted),"
            f" {self.runlists} runlists; {self.print_events} print events"
            f" ({self.aborted_events} aborted, {self.malformed_print_rows} malformed,"
            f" {self.bad_file_ids} bad file ids), {self.scans} scans"
            f" ({self.unusable_scans} unusable)"
        )


@dataclass(frozen=True)
class _Version:
    job_id: str
    version_tag: str
    files: tuple[str, ...]
    order: float  # where it falls in the production sequence


@dataclass
class _Imposition:
    files: list[str]
    position: float
    imposition_id: str = ""
    planned_h: float = 0.0  # hours after the start of the history
    last_event_h: float | None = None
    printed: bool = False


@dataclass
class _Plan:
    """The whole shop as rows, times still in hours after the start of the history."""

    jobs: list[tuple[str, str, float]] = field(default_factory=list)  # job_id, name, created_h
    missing_jobs: set[str] = field(default_factory=set)
    owner: dict[str, tuple[str, str]] = field(default_factory=dict)  # file id → job version
    versions: list[_Version] = field(default_factory=list)
    impositions: list[_Imposition] = field(default_factory=list)
    runlists: dict[str, list[str]] = field(default_factory=dict)
    bad_mappings: list[tuple[str, str]] = field(default_factory=list)
    missing_print_ops: set[tuple[str, str]] = field(default_factory=set)
    events: list[tuple[float, str | None, str]] = field(default_factory=list)  # h, name, status
    malformed_events: int = 0
    scans: list[tuple[float, str, str, str]] = field(default_factory=list)  # h, code, mach, ops
    unusable_scans: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _occupied_tables(jobmanager: sa.Engine, logs: sa.Engine) -> list[str]:
    with jobmanager.connect() as jm, logs.connect() as lg:
        return [*jm.execute(_OCCUPIED_JOBMANAGER).scalars(), *lg.execute(_OCCUPIED_LOGS).scalars()]


def shop_is_empty(jobmanager: sa.Engine, logs: sa.Engine) -> bool:
    """True when the shop's tables hold no rows: no jobs, no print OS rows, nothing planned."""
    return not _occupied_tables(jobmanager, logs)


def generate_shop(
    jobmanager: sa.Engine, logs: sa.Engine, scale: int = 1, seed: int = 7
) -> DemoSummary:
    """Fill an empty shop with ~200 × scale jobs and their history; refuses a non-empty shop."""
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    occupied = _occupied_tables(jobmanager, logs)
    if occupied:
        raise ValueError(
            f"the shop is not empty ({', '.join(occupied)} already hold rows);"
            " demo data is only generated into an empty shop, so it is never doubled"
        )
    plan = _build_plan(random.Random(seed), scale)
    start = _utcnow() - HISTORY
    with logs.begin() as lg, jobmanager.begin() as jm, ThreadPoolExecutor(1) as pool:
        # The logs server builds its indexes while this thread formats the jobmanager rows;
        # the connection is used by the worker alone until the future is done.
        logs_written = pool.submit(_write_logs, lg, plan, start)
        _write_jobmanager(jm, plan, start, random.Random(seed + 1))
        logs_written.result()
    return _summarise(plan, scale, seed)


def simulate_tick(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    rng: random.Random,
    print_events: int = 3,
    scans: int = 2,
) -> dict[str, int]:
    """Append a few press events and scans stamped now, as a live shop would."""
    now = _utcnow()
    with logs.connect() as lg:
        mapping = _sample_rows(lg, _MAPPING_ID_RANGE, _MAPPING_AT, rng, 4 * print_events + scans)
        runlists = _sample_rows(lg, _RUNLIST_ID_RANGE, _RUNLIST_AT, rng, scans)
    candidates = list(dict.fromkeys(row[1] for row in mapping))
    with jobmanager.begin() as jm:
        printed = set(jm.execute(_PRINTED_AMONG, {"names": candidates}).scalars())
        # Prefer impositions not printed yet, so the live shop moves jobs towards completed.
        chosen = sorted(candidates, key=lambda name: name in printed)[:print_events]
        jm.execute(_LOCK_MARKERS)
        marker = jm.execute(_LAST_MARKER, {"first": FIRST_MARKER}).scalar_one()
        press, rows = _Press(rng), []
        for name in chosen:
            marker += rng.randint(1, 3)
            status = "PRINTED" if rng.random() < 0.85 else "ABORTED"
            rows.append(dict(zip(PRINT_COLUMNS, press.row(name, status, marker, now), strict=True)))
        if rows:
            jm.execute(_INSERT_PRINT, rows)
        codes = [row[1] for row in runlists]
        codes += [
            f"{p[0]}_{p[1]}" for p in (parse_file_id(row[2], CUSTOMER) for row in mapping) if p
        ]
        rng.shuffle(codes)
        scan_rows = []
        for code in codes[:scans]:
            machine, names = _machine_operations(rng)
            shape = rng.choice(GOOD_SHAPES)
            scan_rows.append(
                {
                    "code": code,
                    "at": now,
                    "machine": machine,
                    "user_id": f"op{rng.randint(1, 12):02d}",
                    "operations": _operations_json(rng, shape, names),
                    "metadata": json.dumps({"source": "simulator"}),
                }
            )
        if scan_rows:
            jm.execute(_INSERT_SCAN, scan_rows)
    aborted = sum(row["status"] == "ABORTED" for row in rows)
    return {"print_events": len(rows), "aborted": aborted, "scans": len(scan_rows)}


# ----- planning: pure, deterministic given the rng --------------------------------------------


def _build_plan(rng: random.Random, scale: int) -> _Plan:
    plan = _Plan()
    _plan_jobs(rng, plan, JOBS_PER_SCALE * scale)
    _plan_impositions(rng, plan)
    _plan_runlists(rng, plan)
    _plan_operations(rng, plan)
    _plan_print_history(rng, plan, scale)
    _plan_scans(rng, plan, scale)
    _fit_into_history(plan)
    return plan


def _plan_jobs(rng: random.Random, plan: _Plan, count: int) -> None:
    """Jobs in order-number sequence; ~15% reissued as version 2, a few as version 3."""
    orders = sorted(rng.sample(range(1000, 1000 + 8 * count), count))
    for index, order in enumerate(orders):
        job_id = f"{order}_{rng.randint(1000, 9999)}"
        name = f"{CUSTOMER} {rng.choice(PRODUCTS)} - {rng.choice(LABEL_PARTS)}"
        plan.jobs.append((job_id, name, 0.0))
        roll = rng.random()
        count_versions = 3 if roll < 0.04 else 2 if roll < 0.16 else 1
        for version in range(1, count_versions + 1):
            n_files = rng.choices(FILES_PER_VERSION, cum_weights=FILES_CUM_WEIGHTS)[0]
            first = rng.randint(1, 90)
            files = tuple(f"FILE_{version}_{CUSTOMER}_{job_id}_{first + i}" for i in range(n_files))
            # A reissue is planned some days after the version it replaces.
            order_key = (
                index / count + rng.uniform(0, 0.02) + (version - 1) * rng.uniform(0.03, 0.15)
            )
            plan.versions.append(_Version(job_id, str(version), files, order_key))
            plan.owner.update(dict.fromkeys(files, (job_id, str(version))))
    # R16/R20: ~3% of the jobs named by file ids never reached the jobs table.
    absent = rng.sample(range(count), max(1, round(0.03 * count)))
    plan.missing_jobs = {plan.jobs[i][0] for i in absent}


def _plan_impositions(rng: random.Random, plan: _Plan) -> None:
    """Gang 1–4 jobs per imposition; split some versions over two; reprint ~5% of files."""
    chunks: list[tuple[float, list[str]]] = []
    for version in plan.versions:
        files = list(version.files)
        if len(files) >= 2 and rng.random() < 0.08:
            cut = rng.randint(1, len(files) - 1)
            chunks.append((version.order, files[:cut]))
            chunks.append((version.order + rng.uniform(0.005, 0.05), files[cut:]))
        else:
            chunks.append((version.order, files))
    chunks.sort(key=lambda chunk: chunk[0])
    main: list[_Imposition] = []
    i = 0
    while i < len(chunks):
        ganged = rng.choices(JOBS_PER_IMPOSITION, cum_weights=JOBS_CUM_WEIGHTS)[0]
        files = [f for _, chunk in chunks[i : i + ganged] for f in chunk]
        main.append(_Imposition(files=files, position=float(len(main))))
        i += ganged
    picked = [(imp.position, f) for imp in main for f in imp.files if rng.random() < 0.05]
    reprints: list[_Imposition] = []
    i = 0
    while i < len(picked):
        group = picked[i : i + rng.randint(2, 4)]  # 1–4 jobs, like any imposition
        position = group[-1][0] + len(main) * rng.uniform(0.01, 0.04)  # half a day or so
        reprints.append(_Imposition(files=[f for _, f in group], position=position))
        i += len(group)
    plan.impositions = sorted(main + reprints, key=lambda imp: imp.position)
    total = len(plan.impositions)
    for rank, imp in enumerate(plan.impositions):
        imp.imposition_id = f"IMP-{rank + 1:06d}"
        imp.planned_h = HISTORY_H * 0.97 * (rank + rng.random()) / total
    first_planned: dict[str, float] = {}
    for imp in reversed(plan.impositions):
        for file_id in imp.files:
            first_planned[plan.owner[file_id][0]] = imp.planned_h
    plan.jobs = [
        (job_id, name, first_planned[job_id] - rng.uniform(2, 72)) for job_id, name, _ in plan.jobs
    ]


def _plan_runlists(rng: random.Random, plan: _Plan) -> None:
    """Consecutive impositions grouped 2–6 per runlist; ~8% planned outside any runlist."""
    group: list[str] = []
    size = rng.randint(2, 6)
    for imp in plan.impositions:
        if rng.random() < 0.08:
            continue
        group.append(imp.imposition_id)
        if len(group) == size:
            plan.runlists[f"RL-{len(plan.runlists) + 1:05d}"] = group
            group, size = [], rng.randint(2, 6)
    if len(group) >= 2:
        plan.runlists[f"RL-{len(plan.runlists) + 1:05d}"] = group


def _plan_operations(rng: random.Random, plan: _Plan) -> None:
    """R16: ~2% of job versions lack their op001 (print) row."""
    keys = [(v.job_id, v.version_tag) for v in plan.versions]
    plan.missing_print_ops = set(rng.sample(keys, max(1, round(0.02 * len(keys)))))


def _plan_print_history(rng: random.Random, plan: _Plan, scale: int) -> None:
    """~70% of impositions printed in lots, some aborted, some aborted then reprinted.

    The press runs PRINT_LAG_H behind planning, so the newest impositions are still queued;
    others are on hold.
    """
    stories: list[tuple[_Imposition, str, float]] = []
    for imp in plan.impositions:
        at = imp.planned_h + PRINT_LAG_H + rng.uniform(0, 2)
        if at >= HISTORY_H or rng.random() < 0.18:
            continue  # still queued, or on hold
        roll = rng.random()
        story = "aborted" if roll < 0.07 else "retried" if roll < 0.15 else "printed"
        stories.append((imp, story, at))
    printed = [imp for imp, story, _ in stories if story != "aborted"]
    base = sum({"aborted": 1, "retried": 2, "printed": 1}[story] for _, story, _ in stories)
    extra_lots = Counter(
        imp.imposition_id
        for imp in rng.choices(printed, k=max(0, PRINT_EVENTS_PER_SCALE * scale - base))
    )
    for imp, story, at in stories:
        if story == "aborted":
            statuses = ["ABORTED"] * rng.choice((1, 1, 2))
        else:
            lots = ["PRINTED"] + [
                "ABORTED" if rng.random() < 0.075 else "PRINTED"
                for _ in range(extra_lots[imp.imposition_id])
            ]
            rng.shuffle(lots)
            statuses = (["ABORTED"] if story == "retried" else []) + lots
        for status in statuses:
            plan.events.append((at, imp.imposition_id, status))
            imp.printed |= status == "PRINTED"
            imp.last_event_h = at
            at += rng.uniform(0.03, 0.4) if status == "PRINTED" else rng.uniform(0.2, 2)
    _plan_malformed_print(rng, plan, scale, [imp for imp in plan.impositions if imp.printed])


def _plan_malformed_print(
    rng: random.Random, plan: _Plan, scale: int, printed: list[_Imposition]
) -> None:
    """R20: unmapped impositions, unknown statuses, NULL names, bad file ids in printed ones."""
    count = MALFORMED_PER_SCALE * scale
    first_unmapped = len(plan.impositions) + 100_001
    for i in range(count):
        plan.events.append((rng.uniform(0, HISTORY_H), f"IMP-{first_unmapped + i:06d}", "PRINTED"))
        real = rng.choice(plan.impositions).imposition_id
        plan.events.append((rng.uniform(0, HISTORY_H), real, UNKNOWN_STATUSES[i % 3]))
        plan.events.append((rng.uniform(0, HISTORY_H), None, "PRINTED"))
    plan.malformed_events = 3 * count
    for i, imp in enumerate(rng.sample(printed, min(count, len(printed)))):
        plan.bad_mappings.append((imp.imposition_id, BAD_FILE_IDS[i % len(BAD_FILE_IDS)]))


def _plan_scans(rng: random.Random, plan: _Plan, scale: int) -> None:
    """Finishing scans after printing: runlists mostly, job barcodes, a few unrecognised."""
    total = SCANS_PER_SCALE * scale
    unrecognised = max(4, total * 3 // 100)
    job_scans = total // 4
    good = total - unrecognised
    unusable = max(2, good // 50)
    unknown = max(2, good * 3 // 100)
    shapes = ["number", "string"] * (unusable // 2) + ["unknown"] * unknown
    shapes += [GOOD_SHAPES[i % 4] for i in range(good - len(shapes))]
    rng.shuffle(shapes)
    plan.unusable_scans = unrecognised + len(shapes) - sum(s in GOOD_SHAPES for s in shapes)

    # A scan follows the last print of what it scans, or its print slot when not printed yet.
    ready_h = {
        imp.imposition_id: imp.last_event_h if imp.printed else imp.planned_h + PRINT_LAG_H
        for imp in plan.impositions
    }
    printed = {imp.imposition_id for imp in plan.impositions if imp.printed}
    runlist_ids = list(plan.runlists)
    runlist_ready = {r: max(ready_h[i] for i in imps) for r, imps in plan.runlists.items()}
    printed_runlists = [r for r in runlist_ids if not printed.isdisjoint(plan.runlists[r])]
    in_runlist = {i for imps in plan.runlists.values() for i in imps}
    version_imps: dict[tuple[str, str], set[str]] = defaultdict(set)
    for imp in plan.impositions:
        for file_id in imp.files:
            version_imps[plan.owner[file_id]].add(imp.imposition_id)
    version_ready = {v: max(ready_h[i] for i in imps) for v, imps in version_imps.items()}
    planned = [v for v, imps in version_imps.items() if not in_runlist.isdisjoint(imps)]
    unplanned = [v for v, imps in version_imps.items() if in_runlist.isdisjoint(imps)] or planned

    for index, shape in enumerate(shapes):
        if index < job_scans:
            version = rng.choice(unplanned if rng.random() < 0.4 else planned)
            code = f"{version[0]}_{version[1]}"
            ready = version_ready[version]
        else:
            pool = printed_runlists if printed_runlists and rng.random() < 0.92 else runlist_ids
            code = rng.choice(pool)
            ready = runlist_ready[code]
        if rng.random() < 0.05:  # scanners add stray whitespace (R5 trims)
            code = rng.choice((" {} ", "{}\n", "\t{}", "{} ")).format(code)
        machine, names = _machine_operations(rng)
        # Finishing follows printing; what is not printed yet was scanned in the last hours.
        at = min(ready + rng.uniform(0.3, 36), HISTORY_H - rng.uniform(0.05, 2))
        plan.scans.append((at, code, machine, _operations_json(rng, shape, names)))
    for i in range(unrecognised):
        code = ("XYZ-???", "NOREAD", f"RL-{len(plan.runlists) + 1 + i:05d}")[i % 3]
        machine, names = _machine_operations(rng)
        ops = _operations_json(rng, rng.choice(GOOD_SHAPES), names)
        plan.scans.append((rng.uniform(0, HISTORY_H), code, machine, ops))


def _fit_into_history(plan: _Plan) -> None:
    """Order events and scans in time, compressed where needed so none lies in the future."""
    span = HISTORY_H - 0.05
    latest = max([e[0] for e in plan.events] + [s[0] for s in plan.scans] + [span])
    factor = span / latest
    plan.events = sorted(((h * factor, n, s) for h, n, s in plan.events), key=lambda e: e[0])
    plan.scans = sorted(((h * factor, *rest) for h, *rest in plan.scans), key=lambda s: s[0])
    for imp in plan.impositions:
        imp.planned_h *= factor
    plan.jobs = [(job_id, name, h * factor) for job_id, name, h in plan.jobs]


def _machine_operations(rng: random.Random) -> tuple[str, list[str]]:
    machine = rng.choices(MACHINES, cum_weights=MACHINE_CUM_WEIGHTS)[0]
    if machine == "coater-1":
        return machine, ["coating", "kiss_cut"] if rng.random() < 0.3 else ["coating"]
    return machine, [MACHINE_OPERATION[machine]]


def _operations_json(rng: random.Random, shape: str, names: list[str]) -> str:
    """One scan's ``operations`` in the given R7 shape, names spelled as operators type them."""
    spelled = [rng.choice(SPELLINGS[name]) for name in names]
    if shape == "number":
        return "42"
    if shape == "string":
        return json.dumps(spelled[0])
    if shape == "unknown":
        spelled.append(rng.choice(UNKNOWN_OPERATIONS))
        shape = rng.choice(GOOD_SHAPES)
    value: object
    if shape == "dict":
        value = dict.fromkeys(spelled, True)
        if names == ["coating"]:
            value["kiss_cut"] = False  # only true-ish values count
    elif shape == "list":
        value = spelled
    elif shape == "dicts":
        value = [{rng.choice(("operation", "name")): s} for s in spelled]
    else:
        value = {"operations": rng.choice((spelled, [{"operation": s} for s in spelled]))}
    return json.dumps(value)


def _spell_status(rng: random.Random, status: str) -> str:
    """R10 compares case-insensitively; the press does not always shout."""
    roll = rng.random()
    if roll < 0.07:
        return status.lower()
    if roll < 0.12:
        return status.capitalize()
    return status


class _Press:
    """Writes "print OS" rows as the press does; press and substrate stay with an imposition."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._setup: dict[str | None, str] = {}

    def row(self, name: str | None, status: str, marker: int, at: datetime) -> tuple[object, ...]:
        """Values in PRINT_COLUMNS order."""
        rng = self.rng
        setup = self._setup.get(name)
        if setup is None:
            look = {"press": rng.choice(PRESSES), "substrate": rng.choice(SUBSTRATES)}
            setup = self._setup[name] = json.dumps(look, ensure_ascii=False)[:-1]
        if status.upper() == "PRINTED":
            copies = 250 + 50 * int(95 * rng.random())
        else:
            copies = int(250 * rng.random())
        duration = 120 + int(3480 * rng.random())
        payload = f'{setup}, "sheets": {copies // 4}, "duration_s": {duration}}}'
        job_name = f"{name}.pdf" if name else None
        return (name, status, marker, job_name, f"{rng.getrandbits(48):012x}", at, copies, payload)


def _sample_rows(
    conn: sa.Connection, id_range: sa.TextClause, at_ids: sa.TextClause, rng: random.Random, k: int
) -> list[sa.Row]:
    """About k random rows of a table keyed by a BIGSERIAL id (gaps just give fewer rows)."""
    low, high = conn.execute(id_range).one()
    if low is None or k <= 0:
        return []
    ids = [rng.randint(low, high) for _ in range(k)]
    found = {row[0]: row for row in conn.execute(at_ids, {"ids": ids})}
    return [found[i] for i in ids if i in found]


# ----- writing: COPY, one transaction per database ---------------------------------------------


def _copy(
    conn: sa.Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    """COPY rows as CSV (C-speed formatting); None is NULL, so rows hold no empty strings."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    rows = iter(rows)
    with conn.connection.driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        while batch := list(itertools.islice(rows, COPY_BATCH)):
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(batch)
            copy.write(buffer.getvalue())


def _at(start: datetime, hours: float) -> datetime:
    return start + timedelta(microseconds=round(hours * 3_600_000_000))


def _increasing(start: datetime, hours: Iterable[float]) -> list[datetime]:
    """Timestamps strictly increasing in the given order, to the microsecond."""
    out: list[datetime] = []
    for h in hours:
        at = _at(start, h)
        out.append(at if not out or at > out[-1] else out[-1] + timedelta(microseconds=1))
    return out


def _write_logs(conn: sa.Connection, plan: _Plan, start: datetime) -> None:
    bad = defaultdict(list)
    for imposition_id, file_id in plan.bad_mappings:
        bad[imposition_id].append(file_id)
    _copy(
        conn,
        "imposition_file_mapping",
        ("imposition_id", "file_id", "created_at"),
        (
            (imp.imposition_id, file_id, _at(start, imp.planned_h - 1))
            for imp in plan.impositions
            for file_id in imp.files + bad[imp.imposition_id]
        ),
    )
    planned_h = {imp.imposition_id: imp.planned_h for imp in plan.impositions}
    _copy(
        conn,
        "production_planner_paths",
        ("runlist_id", "imposition_id", "path", "created_at"),
        (
            (runlist_id, i, f"/planner/{runlist_id}/{i}.pdf", _at(start, planned_h[imps[0]] - 2))
            for runlist_id, imps in plan.runlists.items()
            for i in imps
        ),
    )
    _copy(
        conn,
        "job_operations",
        ("job_operation_id", "job_id", "version_tag", "operation_id", "sequence_order", "required"),
        (
            (f"{v.job_id}:{v.version_tag}:{op}", v.job_id, v.version_tag, op, seq, True)
            for v in plan.versions
            for op, seq in PLANNED_OPERATIONS
            if not (op == "op001" and (v.job_id, v.version_tag) in plan.missing_print_ops)
        ),
    )
    _copy(
        conn,
        "imposition_operations",
        ("imposition_operation_id", "imposition_id", "operation_id", "sequence_order", "required"),
        (
            (f"{imp.imposition_id}:{op}", imp.imposition_id, op, seq, True)
            for imp in plan.impositions
            for op, seq in PLANNED_OPERATIONS
        ),
    )
    conn.execute(
        sa.text(
            "ANALYZE imposition_file_mapping, production_planner_paths,"
            " job_operations, imposition_operations"
        )
    )


def _write_jobmanager(
    conn: sa.Connection, plan: _Plan, start: datetime, rng: random.Random
) -> None:
    _copy(
        conn,
        "jobs",
        ("job_id", "customer", "job_name", "created_at"),
        (
            (job_id, CUSTOMER, name, _at(start, h))
            for job_id, name, h in plan.jobs
            if job_id not in plan.missing_jobs
        ),
    )
    times = _increasing(start, (h for h, _, _ in plan.events))
    press, rows = _Press(rng), []
    marker = FIRST_MARKER
    for (_, name, status), at in zip(plan.events, times, strict=True):
        # The API lags the press; one string for both columns saves formatting 200k datetimes.
        received = str(at + timedelta(seconds=1 + 89 * rng.random()))
        rows.append((*press.row(name, _spell_status(rng, status), marker, at), received, received))
        marker += 1 + int(3 * rng.random())  # markers skip: the press numbers more than jobs
    _copy(conn, "print OS", (*PRINT_COLUMNS, "created_at", "updated_at"), rows)
    scan_times = _increasing(start, (s[0] for s in plan.scans))
    _copy(
        conn,
        "scanned_codes",
        ("code_text", "scanned_at", "machine_id", "user_id", "operations", "metadata"),
        (
            (
                code,
                at,
                machine,
                f"op{rng.randint(1, 12):02d}",
                ops,
                SCAN_METADATA[machine, rng.choice("ABC")],
            )
            for (_, code, machine, ops), at in zip(plan.scans, scan_times, strict=True)
        ),
    )
    conn.execute(sa.text('ANALYZE jobs, "print OS", scanned_codes'))


def _summarise(plan: _Plan, scale: int, seed: int) -> DemoSummary:
    holders = Counter(f for imp in plan.impositions for f in imp.files)
    files = len(holders)
    return DemoSummary(
        scale=scale,
        seed=seed,
        jobs=len(plan.jobs) - len(plan.missing_jobs),
        missing_jobs=len(plan.missing_jobs),
        job_versions=len(plan.versions),
        files=files,
        file_mappings=sum(holders.values()) + len(plan.bad_mappings),
        reprinted_files=sum(n > 1 for n in holders.values()),
        impositions=len(plan.impositions),
        runlists=len(plan.runlists),
        job_operations=len(PLANNED_OPERATIONS) * len(plan.versions) - len(plan.missing_print_ops),
        missing_print_operations=len(plan.missing_print_ops),
        imposition_operations=len(PLANNED_OPERATIONS) * len(plan.impositions),
        print_events=len(plan.events),
        aborted_events=sum(status == "ABORTED" for _, _, status in plan.events),
        malformed_print_rows=plan.malformed_events,
        bad_file_ids=len(plan.bad_mappings),
        scans=len(plan.scans),
        unusable_scans=plan.unusable_scans,
    )
