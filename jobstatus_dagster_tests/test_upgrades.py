"""Upgrades (issue 20): a shop migrated by an older jobstatus (migrations up to 0013) with data
in it is brought to the current schema by `jobstatus migrate`, and processing then works; the
Dagster database is upgraded by `dagster instance migrate` with our instance file."""

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner
from yoyo import get_backend, read_migrations

from jobstatus_dagster.cli import main
from jobstatus_dagster.db import SQL_DIR, apply_migrations, migrate, to_sqlalchemy_url
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
    return sorted(p.stem for p in (SQL_DIR / database).glob("*.sql") if p.stem[:4] > last)


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


def test_dagster_instance_migrate_runs_on_our_instance_file(urls, tmp_path) -> None:
    """What the README tells an operator to run after upgrading Dagster: it reads dagster.yaml
    from DAGSTER_HOME (our file, storage from the environment) and upgrades the storage."""
    env = daemon_env(urls, tmp_path / "dagster_home")
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "instance", "migrate"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Updating run storage..." in done.stdout
    assert "Updating schedule storage..." in done.stdout
