"""Upgrades (issue 20): a shop migrated by an older jobstatus (migrations up to 0013) with data
in it is brought to the current schema by `jobstatus migrate`, and processing then works; the
Dagster database, left at an older Dagster's schema, is upgraded by `dagster instance migrate`
with our instance file."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from click.testing import CliRunner
from yoyo import get_backend, read_migrations

from jobstatus_dagster.cli import main
from jobstatus_dagster.db import (
    SQL_DIR,
    apply_migrations,
    make_engine,
    migrate,
    to_sqlalchemy_url,
)
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.daemon import daemon_env
from jobstatus_testkit.databases import fresh_urls

OLDER = "0013"  # the last migration of both databases in the older jobstatus


def migrate_up_to(url: str, folder: Path, last: str) -> list[str]:
    """What an older jobstatus had applied: the folder's migrations up to ``last``."""
    migrations = read_migrations(str(folder))
    older = migrations.filter(lambda m: m.id.split("_")[0] <= last)
    backend = get_backend(to_sqlalchemy_url(url, "psycopg"))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(older))
    return [m.id for m in older]


def newer_than(database: str, last: str) -> list[str]:
    return sorted(
        p.stem
        for p in (SQL_DIR / database).glob("*.sql")
        if p.stem[:4] > last and not p.stem.endswith(".rollback")  # an undoing, never applied
    )


def test_jobstatus_migrate_brings_an_older_installation_with_data_to_the_current_schema(
    pg_admin_uri, instance, tmp_path
) -> None:
    urls = fresh_urls(pg_admin_uri, "older")
    for database, url in (("jobmanager", urls.jobmanager), ("logs", urls.logs)):
        apply_migrations(url, SQL_DIR / "baseline" / database)
        assert migrate_up_to(url, SQL_DIR / database, OLDER)[-1].startswith(OLDER)

    with Shop(urls) as shop:
        # The shop's data, and a failure the older version recorded and still retries.
        shop.add_job("9501_1")
        shop.add_job_operation("9501_1", "1")
        shop.map_files("UP-I1", ["FILE_1_Labex_9501_1_1"])
        shop.print_event("UP-I1", "PRINTED")
        shop.execute(
            shop.jm,
            "INSERT INTO processing_failures (source_type, source_id, reason, subject)"
            " VALUES ('scanner', 77, 'unrecognised_code', 'RL-OLD')",
        )

        env = {
            "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
            "JOBSTATUS_LOGS_URL": urls.logs,
            "JOBSTATUS_DAGSTER_URL": urls.dagster,
            "JOBSTATUS_HOME": str(tmp_path / "home"),
            "JOBSTATUS_DAGSTER_STORAGE_URL": None,
            "DAGSTER_HOME": None,
        }
        result = CliRunner().invoke(main, ["migrate"], env=env)
        assert result.exit_code == 0, result.output
        # Exactly the migrations newer than the older version's, in order.
        assert f"jobmanager: {', '.join(newer_than('jobmanager', OLDER))}" in result.output
        assert f"logs: {', '.join(newer_than('logs', OLDER))}" in result.output
        assert migrate(urls) == {"jobmanager": [], "logs": []}

        with shop.jm.connect() as conn:
            failure = conn.execute(
                sa.text("SELECT reason, subject FROM processing_failures WHERE source_id = 77")
            ).one()
        assert tuple(failure) == ("unrecognised_code", "RL-OLD")  # kept

        outcome = shop.process(instance)
        assert outcome.total("rows_read") == 1
        assert shop.job_print_row("9501_1", "1")["status"] == "completed"
        assert shop.job_operations_json("9501_1")["print"] is True
        assert [row["status"] for row in shop.audit("9501_1")] == ["completed"]


# The `dagster` database of an installation on an older Dagster (mid 2024, alembic revision
# 284a732df317): what Dagster's migrations 044-048 and two of its data migrations added since,
# taken away as their downgrade() does.
OLDER_REVISION = "284a732df317"
OLDER_DAGSTER = [
    "ALTER TABLE runs DROP COLUMN backfill_id",  # 044, with 045's index
    "ALTER TABLE bulk_actions DROP COLUMN job_name",  # 046
    "DROP TABLE backfill_tags",  # 046
    "ALTER TABLE concurrency_limits DROP COLUMN using_default_limit",  # 048
    "DELETE FROM secondary_indexes WHERE name IN ('run_backfill_id', 'backfill_job_name_and_tags')",
    f"UPDATE alembic_version SET version_num = '{OLDER_REVISION}'",
]


def _dagster_schema(url: str) -> dict:
    """What an upgrade changes: the revision, the columns and indexes of the tables concerned,
    the data migrations done."""
    engine = make_engine(url)
    tables = ("runs", "bulk_actions", "backfill_tags", "concurrency_limits")
    try:
        with engine.connect() as conn:

            def scalars(query: str) -> set:
                return set(conn.execute(sa.text(query), {"tables": list(tables)}).scalars())

            return {
                "revision": scalars("SELECT version_num FROM alembic_version"),
                "columns": scalars(
                    "SELECT table_name || '.' || column_name FROM information_schema.columns"
                    " WHERE table_name = ANY(:tables)"
                ),
                "indexes": scalars(
                    "SELECT indexname FROM pg_indexes WHERE tablename = ANY(:tables)"
                ),
                "data migrations": scalars(
                    "SELECT name FROM secondary_indexes WHERE migration_completed IS NOT NULL"
                ),
            }
    finally:
        engine.dispose()


@dg.op
def _noop() -> None:
    pass


@dg.job
def _older_job() -> None:
    _noop()


def test_dagster_instance_migrate_brings_an_older_dagster_storage_to_the_current_schema(
    urls, instance, tmp_path
) -> None:
    """What the README tells an operator to run after upgrading Dagster, as the services would
    (dagster.yaml from DAGSTER_HOME, storage from the environment), on a `dagster` database left
    at an older Dagster's schema, with a backfill's run in it: Dagster's schema migrations and
    data migrations up to the installed version's, the run's backfill filled in."""
    run = instance.create_run_for_job(_older_job, tags={"dagster/backfill": "oldbackfill"})
    current = _dagster_schema(urls.dagster)
    engine = make_engine(urls.dagster)
    try:
        with engine.begin() as conn:
            for statement in OLDER_DAGSTER:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
    older = _dagster_schema(urls.dagster)
    assert older["revision"] == {OLDER_REVISION} != current["revision"]
    gone = {"runs.backfill_id", "bulk_actions.job_name", "concurrency_limits.using_default_limit"}
    assert gone <= current["columns"] and not gone & older["columns"]
    assert "idx_runs_by_backfill_id" in current["indexes"] - older["indexes"]
    assert "run_backfill_id" in current["data migrations"] - older["data migrations"]

    env = daemon_env(urls, tmp_path / "dagster_home")
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "instance", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Updating run storage..." in done.stdout
    assert "Updating schedule storage..." in done.stdout
    assert _dagster_schema(urls.dagster) == current
    engine = make_engine(urls.dagster)
    try:
        with engine.connect() as conn:
            backfill = conn.execute(
                sa.text("SELECT backfill_id FROM runs WHERE run_id = :r"), {"r": run.run_id}
            ).scalar()
    finally:
        engine.dispose()
    assert backfill == "oldbackfill"
