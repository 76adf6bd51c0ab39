"""A processing process pools its Dagster storage connections (fewer connects per run) and
survives a database restart: pooled connections that died are replaced (fault scenario 5)."""

import sqlalchemy as sa

from jobstatus_dagster.db import to_sqlalchemy_url
from jobstatus_dagster.pipeline.runner import pool_storage_connections
from jobstatus_dagster_tests.shop import Shop


def test_pooled_storage_survives_its_connections_being_killed(urls, instance, shop: Shop) -> None:
    pool_storage_connections(instance)
    storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
    assert all(s._engine.pool._pre_ping for s in storages)

    job = shop.add_job()
    shop.map_files(f"{job}-A", [f"FILE_1_Labex_{job}_1"])
    shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)  # the pools now hold open connections

    # What a server restart does to them: every connection to Dagster's database is cut.
    dagster_db = sa.engine.make_url(to_sqlalchemy_url(urls.dagster)).database
    admin = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    with admin.begin() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": dagster_db},
        ).scalar_one()
    admin.dispose()
    assert killed >= 1

    shop.print_event(f"{job}-A", "PRINTED")
    outcome = shop.process(instance)  # asserts success
    assert len(outcome.runs) == 1
