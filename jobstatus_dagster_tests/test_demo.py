"""The demo shop holds every kind of row the processor must handle, deterministically.

Runs against the embedded Postgres: one shop generated per module, plus fresh databases for
the determinism, scale and simulator checks.
"""

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from jobstatus_dagster.core.identifiers import FILE_JOB_SQL, parse_file_id
from jobstatus_dagster.db import DatabaseUrls, migrate, to_sqlalchemy_url
from jobstatus_dagster.demo import DemoSummary, generate_shop, shop_is_empty, simulate_tick
from jobstatus_testkit.databases import fresh_urls

# The SQL job id of a file id (R4), with its "(?:" escaped from sa.text bind parameters.
JOB_OF_FILE = FILE_JOB_SQL.replace(":", r"\:")
JOB_ID = re.compile(r"^[0-9]+_[0-9]+$")
MACHINES = {"coater-1", "kisscut-1", "backscore-1", "slitter-1"}


def rows(engine: sa.Engine, query: str, **params: object) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


def scalar(engine: sa.Engine, query: str, **params: object):
    with engine.connect() as conn:
        return conn.execute(sa.text(query), params).scalar()


@pytest.fixture(scope="module")
def summary(engines: tuple[sa.Engine, sa.Engine]) -> DemoSummary:
    jm, lg = engines
    assert shop_is_empty(jm, lg)
    return generate_shop(jm, lg, scale=1, seed=7)


@pytest.fixture(scope="module")
def jm(engines: tuple[sa.Engine, sa.Engine], summary: DemoSummary) -> sa.Engine:
    return engines[0]


@pytest.fixture(scope="module")
def lg(engines: tuple[sa.Engine, sa.Engine], summary: DemoSummary) -> sa.Engine:
    return engines[1]


@pytest.fixture
def fresh_engines(pg_admin_uri: str) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """Another pair of empty, migrated shop databases."""
    urls: DatabaseUrls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    lg = sa.create_engine(to_sqlalchemy_url(urls.logs))
    yield jm, lg
    jm.dispose()
    lg.dispose()


# ----- what generate_shop writes ------------------------------------------------------------


def test_summary_matches_the_tables(summary: DemoSummary, jm: sa.Engine, lg: sa.Engine) -> None:
    assert summary.jobs == scalar(jm, "SELECT count(*) FROM jobs")
    assert 190 <= summary.jobs + summary.missing_jobs <= 210
    assert summary.print_events == scalar(jm, 'SELECT count(*) FROM "print OS"')
    assert summary.scans == scalar(jm, "SELECT count(*) FROM scanned_codes")
    assert summary.file_mappings == scalar(lg, "SELECT count(*) FROM imposition_file_mapping")
    assert summary.impositions == scalar(
        lg, "SELECT count(DISTINCT imposition_id) FROM imposition_file_mapping"
    )
    assert summary.runlists == scalar(
        lg, "SELECT count(DISTINCT runlist_id) FROM production_planner_paths"
    )
    assert summary.job_operations == scalar(lg, "SELECT count(*) FROM job_operations")
    assert summary.imposition_operations == scalar(lg, "SELECT count(*) FROM imposition_operations")
    assert 700 <= summary.file_mappings <= 1000
    assert 800 <= summary.print_events <= 850
    assert summary.scans == 400
    assert "194 jobs" in summary.line() and "\n" not in summary.line()


def test_jobs_and_file_ids_follow_r4(jm: sa.Engine, lg: sa.Engine) -> None:
    jobs = rows(jm, "SELECT job_id, customer, job_name FROM jobs")
    assert all(
        JOB_ID.match(job_id) and customer == "Labex" and name for job_id, customer, name in jobs
    )
    file_ids = [r[0] for r in rows(lg, "SELECT file_id FROM imposition_file_mapping")]
    parsed = [parse_file_id(f) for f in file_ids]
    bad = [f for f, p in zip(file_ids, parsed, strict=True) if p is None]
    assert sorted(set(bad)) == ["FILE_2_Labex_12345", "FILE_X_Other_abc", "garbage.pdf"]
    good = [f for f in file_ids if parse_file_id(f)]
    assert all(re.fullmatch(r"FILE_[123]_Labex_[0-9]+_[0-9]+_[0-9]+", f) for f in good)


def test_reissued_jobs_have_versions_2_and_3(lg: sa.Engine) -> None:
    tags = dict(
        rows(lg, "SELECT version_tag, count(DISTINCT job_id) FROM job_operations GROUP BY 1")
    )
    assert set(tags) == {"1", "2", "3"}
    assert tags["1"] > tags["2"] > tags["3"] > 0
    # Every version has its own files (1–6 of them).
    per_version = rows(
        lg,
        f"SELECT {JOB_OF_FILE}, substring(file_id from '^FILE_([^_]+)_'), count(DISTINCT file_id)"
        " FROM imposition_file_mapping WHERE file_id LIKE 'FILE_%_Labex_%' GROUP BY 1, 2",
    )
    assert {tag for _, tag, _ in per_version} == {"1", "2", "3"}
    assert all(1 <= n <= 6 for _, _, n in per_version)


def test_impositions_gang_one_to_four_jobs(lg: sa.Engine) -> None:
    jobs_per_imposition = Counter(
        n
        for (n,) in rows(
            lg,
            f"SELECT count(DISTINCT {JOB_OF_FILE}) FROM imposition_file_mapping"
            " GROUP BY imposition_id",
        )
    )
    assert set(jobs_per_imposition) <= {1, 2, 3, 4}
    assert jobs_per_imposition[1] > 0 and jobs_per_imposition[3] + jobs_per_imposition[4] > 0
    ids = [r[0] for r in rows(lg, "SELECT DISTINCT imposition_id FROM imposition_file_mapping")]
    assert all(re.fullmatch(r"IMP-[0-9]{6}", i) for i in ids)


def test_about_five_percent_of_files_are_reprinted(summary: DemoSummary, lg: sa.Engine) -> None:
    reprinted = scalar(
        lg,
        "SELECT count(*) FROM (SELECT file_id FROM imposition_file_mapping"
        " GROUP BY file_id HAVING count(DISTINCT imposition_id) > 1) r",
    )
    assert reprinted == summary.reprinted_files
    assert 0.02 * summary.files <= reprinted <= 0.10 * summary.files


def test_runlists_group_two_to_six_impositions(lg: sa.Engine) -> None:
    sizes = rows(lg, "SELECT runlist_id, count(*) FROM production_planner_paths GROUP BY 1")
    assert all(re.fullmatch(r"RL-[0-9]{5}", r) and 2 <= n <= 6 for r, n in sizes)
    outside = scalar(
        lg,
        "SELECT count(DISTINCT m.imposition_id) FROM imposition_file_mapping m"
        " WHERE NOT EXISTS (SELECT 1 FROM production_planner_paths p"
        " WHERE p.imposition_id = m.imposition_id)",
    )
    assert outside > 0
    in_two = scalar(
        lg,
        f"SELECT count(*) FROM (SELECT {JOB_OF_FILE} FROM imposition_file_mapping m"
        " JOIN production_planner_paths p USING (imposition_id)"
        " GROUP BY 1 HAVING count(DISTINCT p.runlist_id) > 1) j",
    )
    assert in_two > 0  # R6: a few jobs sit in two runlists


def test_r16_some_jobs_and_print_rows_are_missing(
    summary: DemoSummary, jm: sa.Engine, lg: sa.Engine
) -> None:
    in_files = {
        r[0] for r in rows(lg, f"SELECT DISTINCT {JOB_OF_FILE} FROM imposition_file_mapping")
    }
    in_files.discard(None)
    in_jobs = {r[0] for r in rows(jm, "SELECT job_id FROM jobs")}
    missing = in_files - in_jobs
    assert len(missing) == summary.missing_jobs
    assert 0.01 * len(in_files) <= len(missing) <= 0.05 * len(in_files)
    assert in_jobs <= in_files

    ops = rows(lg, "SELECT job_id, version_tag, operation_id FROM job_operations")
    by_version = defaultdict(set)
    for job_id, tag, op in ops:
        by_version[job_id, tag].add(op)
    without_print = [v for v, o in by_version.items() if "op001" not in o]
    assert len(without_print) == summary.missing_print_operations > 0
    assert all(o >= {"op003", "op006"} for o in by_version.values())
    assert scalar(lg, "SELECT count(*) FROM job_operations WHERE completed_at IS NOT NULL") == 0
    assert (
        scalar(
            lg,
            "SELECT count(*) FROM job_operations WHERE job_operation_id <> concat_ws(':',"
            " job_id, version_tag, operation_id)",
        )
        == 0
    )


def test_every_imposition_plans_print_coating_and_kiss_cut(lg: sa.Engine) -> None:
    planned = rows(
        lg,
        "SELECT imposition_id, array_agg(operation_id ORDER BY operation_id),"
        " bool_and(status IS NULL AND completed_at IS NULL)"
        " FROM imposition_operations GROUP BY 1",
    )
    mapped = scalar(lg, "SELECT count(DISTINCT imposition_id) FROM imposition_file_mapping")
    assert len(planned) == mapped
    assert all(ops == ["op001", "op003", "op006"] and untouched for _, ops, untouched in planned)


def test_print_history_markers_and_times_strictly_increase(jm: sa.Engine) -> None:
    history = rows(jm, 'SELECT marker, job_complete_time FROM "print OS" ORDER BY id')
    markers = [m for m, _ in history]
    times = [t for _, t in history]
    assert markers[0] == 1000
    assert all(1 <= b - a <= 3 for a, b in zip(markers, markers[1:], strict=False))
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    now = datetime.now(UTC).replace(tzinfo=None)  # the table holds naive UTC
    assert now - timedelta(days=22) < times[0] and times[-1] < now


def test_print_statuses_mix_cases_aborts_and_reprints(jm: sa.Engine) -> None:
    statuses = Counter(dict(rows(jm, 'SELECT status, count(*) FROM "print OS" GROUP BY status')))
    total = sum(statuses.values())
    printed = sum(n for s, n in statuses.items() if s.upper() == "PRINTED")
    aborted = sum(n for s, n in statuses.items() if s.upper() == "ABORTED")
    assert printed > 0.8 * total
    assert 0.05 * total <= aborted <= 0.12 * total
    assert {"PRINTED", "printed", "ABORTED"} <= set(statuses)
    assert any(s in statuses for s in ("Aborted", "aborted"))
    retried = scalar(
        jm,
        """SELECT count(*) FROM (SELECT name FROM "print OS" GROUP BY name
           HAVING bool_or(upper(status) = 'ABORTED') AND bool_or(upper(status) = 'PRINTED')
              AND min(marker) FILTER (WHERE upper(status) = 'ABORTED')
                < max(marker) FILTER (WHERE upper(status) = 'PRINTED')) r""",
    )
    assert retried > 0


def test_r20_malformed_print_rows_of_every_kind(jm: sa.Engine, lg: sa.Engine) -> None:
    mapped = {r[0] for r in rows(lg, "SELECT DISTINCT imposition_id FROM imposition_file_mapping")}
    names = rows(jm, 'SELECT name, status FROM "print OS"')
    assert sum(name is None for name, _ in names) >= 3
    assert len({name for name, _ in names if name and name not in mapped}) >= 3
    unknown = [s for _, s in names if s.upper() not in {"PRINTED", "ABORTED"}]
    assert len(unknown) >= 3 and "PAUSED" in unknown
    # Bad file ids sit in otherwise good impositions that the press printed.
    bad = rows(
        lg,
        "SELECT imposition_id, count(*) FILTER (WHERE file_id ~ '^FILE_[^_]+_Labex_[0-9]+_[0-9]+')"
        " FROM imposition_file_mapping WHERE imposition_id IN (SELECT imposition_id FROM"
        " imposition_file_mapping WHERE file_id IN ('FILE_X_Other_abc', 'garbage.pdf',"
        " 'FILE_2_Labex_12345')) GROUP BY 1",
    )
    assert len(bad) >= 3 and all(good > 0 for _, good in bad)
    printed = {
        r[0]
        for r in rows(
            jm,
            """SELECT DISTINCT name FROM "print OS" WHERE upper(status) = 'PRINTED'
               AND name = ANY(:names)""",
            names=[i for i, _ in bad],
        )
    }
    assert printed == {i for i, _ in bad}


def print_state(statuses_per_file: list[set[str]]) -> str:
    """R10/R11 for one job version, from the event statuses seen by each of its files."""
    printed = sum("PRINTED" in s for s in statuses_per_file)
    if printed == len(statuses_per_file):
        return "completed"
    if printed:
        return "partial"
    return "aborted" if any("ABORTED" in s for s in statuses_per_file) else "unprinted"


def test_r11_jobs_end_completed_partial_aborted_or_unprinted(jm: sa.Engine, lg: sa.Engine) -> None:
    holders = defaultdict(set)
    for imposition_id, file_id in rows(
        lg, "SELECT imposition_id, file_id FROM imposition_file_mapping"
    ):
        holders[file_id].add(imposition_id)
    events = defaultdict(set)
    for name, status in rows(jm, 'SELECT name, upper(status) FROM "print OS"'):
        events[name].add(status)
    files_of = defaultdict(list)
    for file_id in holders:
        if version := parse_file_id(file_id):
            files_of[version].append(file_id)
    states = Counter(
        print_state([set().union(*(events[i] for i in holders[f])) for f in files])
        for files in files_of.values()
    )
    assert states["completed"] > 0.4 * len(files_of)
    assert states["partial"] > 0 and states["aborted"] > 0 and states["unprinted"] > 0


def test_scans_follow_r5_and_r7_shapes(jm: sa.Engine, lg: sa.Engine) -> None:
    scans = rows(
        jm,
        "SELECT code_text, scanned_at, machine_id, operations FROM scanned_codes ORDER BY scan_id",
    )
    times = [t for _, t, _, _ in scans]
    assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    assert {m for _, _, m, _ in scans} == MACHINES

    runlists = {r[0] for r in rows(lg, "SELECT DISTINCT runlist_id FROM production_planner_paths")}
    planned_versions = {
        parse_file_id(r[0])
        for r in rows(
            lg,
            "SELECT file_id FROM imposition_file_mapping m WHERE EXISTS (SELECT 1 FROM"
            " production_planner_paths p WHERE p.imposition_id = m.imposition_id)",
        )
    }
    kinds = Counter()
    for code, _, _, _ in scans:
        trimmed = code.strip()
        if trimmed != code:
            kinds["whitespace"] += 1
        if trimmed in runlists:
            kinds["runlist"] += 1
        elif m := re.fullmatch(r"([0-9]+_[0-9]+)_([^_]+)", trimmed):
            planned = (m[1], m[2]) in planned_versions
            kinds["job in a runlist" if planned else "job in no runlist"] += 1
        else:
            kinds["unrecognised"] += 1
    assert kinds["runlist"] > 0.5 * len(scans)
    assert kinds["job in a runlist"] > 0 and kinds["job in no runlist"] > 0
    assert kinds["whitespace"] > 0 and kinds["unrecognised"] > 0
    assert "XYZ-???" in {code for code, _, _, _ in scans}

    def shape(ops: object) -> str:
        if isinstance(ops, dict):
            return "wrapped" if "operations" in ops else "dict"
        if isinstance(ops, list):
            return "dicts" if isinstance(ops[0], dict) else "list"
        return type(ops).__name__

    shapes = Counter(shape(ops) for _, _, _, ops in scans)
    assert {"dict", "list", "dicts", "wrapped", "int", "str"} <= set(shapes)
    assert shapes["int"] + shapes["str"] < 0.05 * len(scans)
    text = [str(ops) for _, _, _, ops in scans]
    assert any("laminate" in t or "varnish" in t or "foil" in t for t in text)
    assert any("Kiss Cut" in t for t in text) and any("False" in t for t in text)
    assert any("'name'" in t for t in text) and any("'operation'" in t for t in text)


# ----- guards, determinism, scale, live shop ------------------------------------------------


def test_refuses_a_shop_that_is_not_empty(jm: sa.Engine, lg: sa.Engine) -> None:
    events = scalar(jm, 'SELECT count(*) FROM "print OS"')
    assert not shop_is_empty(jm, lg)
    with pytest.raises(ValueError, match="not empty"):
        generate_shop(jm, lg)
    assert scalar(jm, 'SELECT count(*) FROM "print OS"') == events


def _dump(engine: sa.Engine, table: str, key: str) -> list[tuple]:
    """All rows in key order; timestamps as offsets from their column's minimum (now varies)."""
    data = rows(engine, f"SELECT * FROM {table} ORDER BY {key}")
    for column in range(len(data[0]) if data else 0):
        values = [r[column] for r in data]
        if any(isinstance(v, datetime) for v in values):
            low = min(v for v in values if v is not None)
            for i, v in enumerate(values):
                data[i] = (
                    *data[i][:column],
                    None if v is None else v - low,
                    *data[i][column + 1 :],
                )
    return data


SHOP_TABLES = {
    "jobmanager": (("jobs", "id"), ('"print OS"', "id"), ("scanned_codes", "scan_id")),
    "logs": (
        ("imposition_file_mapping", "id"),
        ("production_planner_paths", "id"),
        ("job_operations", "job_operation_id"),
        ("imposition_operations", "imposition_operation_id"),
    ),
}


def test_same_seed_gives_the_same_shop(
    summary: DemoSummary,
    jm: sa.Engine,
    lg: sa.Engine,
    fresh_engines: tuple[sa.Engine, sa.Engine],
) -> None:
    jm2, lg2 = fresh_engines
    assert shop_is_empty(jm2, lg2)
    assert generate_shop(jm2, lg2, scale=1, seed=7) == summary
    for (first, second), name in (((jm, jm2), "jobmanager"), ((lg, lg2), "logs")):
        for table, key in SHOP_TABLES[name]:
            assert _dump(first, table, key) == _dump(second, table, key), table


def test_rows_grow_linearly_with_scale_and_the_simulator_appends(
    summary: DemoSummary, fresh_engines: tuple[sa.Engine, sa.Engine]
) -> None:
    jm2, lg2 = fresh_engines
    rng = random.Random(3)
    assert simulate_tick(jm2, lg2, rng) == {"print_events": 0, "aborted": 0, "scans": 0}
    scans_before = scalar(jm2, "SELECT count(*) FROM scanned_codes")
    assert scans_before == 0

    double = generate_shop(jm2, lg2, scale=2, seed=11)
    assert double.jobs + double.missing_jobs == 2 * (summary.jobs + summary.missing_jobs)
    assert double.scans == 2 * summary.scans
    for field in ("job_versions", "file_mappings", "impositions", "runlists", "print_events"):
        assert 1.5 <= getattr(double, field) / getattr(summary, field) <= 2.5, field

    last_marker = scalar(jm2, 'SELECT max(marker) FROM "print OS"')
    last_id = scalar(jm2, 'SELECT max(id) FROM "print OS"')
    last_scan = scalar(jm2, "SELECT max(scan_id) FROM scanned_codes")
    counts = simulate_tick(jm2, lg2, rng, print_events=4, scans=3)
    assert counts["print_events"] == 4 and counts["scans"] == 3
    new = rows(
        jm2,
        'SELECT name, upper(status), marker, job_complete_time FROM "print OS" WHERE id > :id'
        " ORDER BY id",
        id=last_id,
    )
    assert len(new) == 4
    markers = [m for _, _, m, _ in new]
    assert markers[0] > last_marker and markers == sorted(set(markers))
    mapped = {r[0] for r in rows(lg2, "SELECT DISTINCT imposition_id FROM imposition_file_mapping")}
    assert all(name in mapped and status in {"PRINTED", "ABORTED"} for name, status, _, _ in new)
    now = datetime.now(UTC).replace(tzinfo=None)
    assert all(abs(now - at) < timedelta(minutes=5) for _, _, _, at in new)

    runlists = {r[0] for r in rows(lg2, "SELECT DISTINCT runlist_id FROM production_planner_paths")}
    scans = rows(
        jm2, "SELECT code_text, operations FROM scanned_codes WHERE scan_id > :s", s=last_scan
    )
    assert len(scans) == 3
    for code, ops in scans:
        assert code in runlists or re.fullmatch(r"[0-9]+_[0-9]+_[123]", code)
        assert isinstance(ops, dict | list) and "laminate" not in str(ops)

    again = simulate_tick(jm2, lg2, rng)
    assert again["print_events"] == 3
    assert scalar(jm2, 'SELECT max(marker) FROM "print OS"') > max(markers)
