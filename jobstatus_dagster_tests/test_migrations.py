"""R1–R3: additive, idempotent migrations, separate from the shop's baseline."""

import re
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import SQL_DIR, apply_migrations, migrate, to_sqlalchemy_url
from jobstatus_dagster.io.sources import (
    load_files_of_jobs,
    load_mapping_for_impositions,
    load_print_history,
    load_print_rows,
    load_runlist_paths,
    load_runlists_of_impositions,
)
from jobstatus_testkit.databases import fresh_urls

SHOP_TABLES = (
    '"print OS"',
    "scanned_codes",
    "jobs",
    "job_operations",
    "imposition_operations",
    "imposition_file_mapping",
    "production_planner_paths",
)


def test_r1_migrate_twice_applies_nothing_the_second_time(urls) -> None:
    assert migrate(urls, baseline=True) == {"jobmanager": [], "logs": []}
    assert migrate(urls) == {"jobmanager": [], "logs": []}


def test_r1_migrations_apply_over_a_baseline_that_holds_data(pg_admin_uri) -> None:
    urls = fresh_urls(pg_admin_uri)
    for name, url in (("jobmanager", urls.jobmanager), ("logs", urls.logs)):
        apply_migrations(url, SQL_DIR / "baseline" / name)
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
    with jm.begin() as conn:
        conn.execute(sa.text("INSERT INTO jobs (job_id, job_name) VALUES ('1_2', 'old job')"))
        conn.execute(
            sa.text("INSERT INTO \"print OS\" (name, status, marker) VALUES ('I', 'PRINTED', 5)")
        )
    with logs.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_operations VALUES ('1_2:1:op001', '1_2', '1', 'op001', 1, true)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES ('I', 'F')"
            )
        )

    applied = migrate(urls)
    # Every migration file of ours applies, in file order, over the shop's data.
    assert applied == {
        name: sorted(f.stem for f in (SQL_DIR / name).glob("*.sql"))
        for name in ("jobmanager", "logs")
    }
    with jm.connect() as conn:
        assert conn.execute(sa.text("SELECT job_name, operations FROM jobs")).one() == (
            "old job",
            {},
        )
        assert conn.execute(sa.text('SELECT count(*) FROM "print OS"')).scalar() == 1
        markers = dict(
            conn.execute(
                sa.text("SELECT marker_type, last_processed_id FROM processing_markers")
            ).all()
        )
        assert markers == {"print_os": 0, "scanned_codes": 0}
    with logs.connect() as conn:
        row = conn.execute(sa.text("SELECT job_id, status, completed_at FROM job_operations")).one()
        assert row == ("1_2", None, None)
        codes = dict(
            conn.execute(sa.text("SELECT operation, operation_id FROM operation_codes")).all()
        )
        assert codes == {
            "print": "op001",
            "coating": "op003",
            "kiss_cut": "op006",
            "backscore": None,
            "slitter": None,
        }
    jm.dispose()
    logs.dispose()


def test_r1_r2_production_migrations_never_create_drop_or_retype_shop_tables() -> None:
    for folder in (SQL_DIR / "jobmanager", SQL_DIR / "logs"):
        for path in folder.glob("*.sql"):
            sql = path.read_text()
            assert not re.search(r"\bDROP\b", sql, re.I), path
            assert not re.search(r"ALTER\s+COLUMN", sql, re.I), path
            for table in SHOP_TABLES:
                assert not re.search(rf"CREATE\s+TABLE[^(]*{re.escape(table)}\s*\(", sql, re.I), (
                    path,
                    table,
                )
            for statement in re.findall(r"CREATE\s+(?:TABLE|INDEX)\s+(?!IF NOT EXISTS)", sql, re.I):
                raise AssertionError(f"{path}: {statement} without IF NOT EXISTS")


def test_r3_marker_is_bigint(urls) -> None:
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    with jm.connect() as conn:
        data_type = conn.execute(
            sa.text(
                "SELECT data_type FROM information_schema.columns WHERE table_name = 'processing_markers'"
                " AND column_name = 'last_processed_id'"
            )
        ).scalar()
    jm.dispose()
    assert data_type == "bigint"


TRIMMED_LOOKUPS = [
    (
        "logs",
        lambda c: load_mapping_for_impositions(c, ["I"]),
        "imposition_file_mapping_imposition",
    ),
    ("logs", lambda c: load_files_of_jobs(c, ["1_2"]), "imposition_file_mapping_job"),
    ("logs", lambda c: load_runlist_paths(c, ["RL"]), "production_planner_paths_runlist"),
    (
        "logs",
        lambda c: load_runlists_of_impositions(c, ["I"]),
        "production_planner_paths_imposition",
    ),
    ("jm", lambda c: load_print_history(c, ["I"], [1]), "print_os_name"),
    ("jm", lambda c: load_print_rows(c, ["I"]), "print_os_name"),
]


@pytest.mark.parametrize(("database", "load", "index"), TRIMMED_LOOKUPS)
def test_r4_trimmed_lookups_reach_their_expression_indexes(
    engines: tuple[sa.Engine, sa.Engine],
    database: str,
    load: Callable[[sa.Connection], object],
    index: str,
) -> None:
    """R4: each lookup's trimmed expression is exactly the one the migrations index; a query
    that differed by a character would silently scan the shop's whole table."""
    engine = engines[0] if database == "jm" else engines[1]
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if "ANY(" in statement:  # the lookup itself, not the dialect's first-connect queries
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.begin() as conn:
            load(conn)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
    assert f"idx_{index}_trimmed" in plan, plan
