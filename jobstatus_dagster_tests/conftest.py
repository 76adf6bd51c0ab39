"""One embedded PostgreSQL 18 per test session; fresh databases per test module."""

import signal
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.daemon import running_daemon
from jobstatus_testkit.databases import Server, embedded_server
from jobstatus_testkit.databases import engines as open_engines


def pytest_configure(config: pytest.Config) -> None:
    """Tests stop process groups with SIGINT, as a terminal's Ctrl-C does. Started as a
    non-interactive shell's background job (`make test &` in a script), the suite would inherit
    SIGINT ignored, and every process it starts would ignore it too: restore Python's default,
    as `jobstatus dev` itself does (processes.interrupt_on_stop_signals)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with embedded_server(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture(scope="session")
def pg_admin_uri(pg_server: Server) -> str:
    return pg_server.admin_uri


@pytest.fixture(scope="module")
def urls(pg_server: Server) -> DatabaseUrls:
    """Fresh jobmanager/logs/dagster databases with the baseline and our migrations."""
    return pg_server.migrated()


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
    with open_engines(urls) as pair:
        yield pair


@pytest.fixture(scope="module")
def daemon(
    urls: DatabaseUrls, instance: dg.DagsterInstance, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A real dagster-daemon serving the module's instance: queued runs and backfills execute."""
    with running_daemon(urls, tmp_path_factory.mktemp("daemon"), instance):
        yield
