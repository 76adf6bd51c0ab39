"""One embedded PostgreSQL 18 per test session; fresh databases per test module."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import (
    DatabaseUrls,
    database_url,
    ensure_databases,
    migrate,
    start_embedded,
    to_sqlalchemy_url,
)
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster_tests.shop import Shop


@pytest.fixture(scope="session")
def pg_admin_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("pg")
    server = start_embedded(Path(home))
    yield server.get_uri("postgres")


def fresh_urls(admin_uri: str) -> DatabaseUrls:
    suffix = uuid.uuid4().hex[:8]
    names = (f"jobmanager_{suffix}", f"logs_{suffix}", f"dagster_{suffix}")
    ensure_databases(admin_uri, names)
    return DatabaseUrls(*(database_url(admin_uri, n) for n in names))


@pytest.fixture(scope="module")
def urls(pg_admin_uri: str) -> DatabaseUrls:
    """Fresh jobmanager/logs/dagster databases with the baseline and our migrations."""
    fresh = fresh_urls(pg_admin_uri)
    migrate(fresh, baseline=True)
    return fresh


@pytest.fixture(scope="module")
def instance(urls: DatabaseUrls, tmp_path_factory: pytest.TempPathFactory):
    """A real DagsterInstance on Postgres storage (dagster-postgres, psycopg2 driver)."""
    with dg.instance_for_test(
        temp_dir=str(tmp_path_factory.mktemp("dagster_home")),
        overrides=instance_overrides(urls.dagster),
    ) as inst:
        yield inst


@pytest.fixture(scope="module")
def shop(urls: DatabaseUrls) -> Iterator[Shop]:
    with Shop(urls) as s:
        yield s


@pytest.fixture(scope="module")
def engines(urls: DatabaseUrls) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    lg = sa.create_engine(to_sqlalchemy_url(urls.logs))
    yield jm, lg
    jm.dispose()
    lg.dispose()
