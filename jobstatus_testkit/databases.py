"""Fresh databases on an embedded PostgreSQL: one server, many throw-away database triples."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from jobstatus_dagster.db import (
    DatabaseUrls,
    database_url,
    ensure_databases,
    migrate,
    start_embedded,
    to_sqlalchemy_url,
)

# The three databases of one installation, in DatabaseUrls order.
ROLES = ("jobmanager", "logs", "dagster")


def fresh_urls(admin_uri: str, tag: str = "") -> DatabaseUrls:
    """Three new empty databases (jobmanager, logs, dagster) on the server of ``admin_uri``."""
    names = _names(tag)
    ensure_databases(admin_uri, names)
    return DatabaseUrls(*(database_url(admin_uri, n) for n in names))


def _names(tag: str) -> tuple[str, ...]:
    suffix = f"{tag}_{uuid.uuid4().hex[:8]}" if tag else uuid.uuid4().hex[:8]
    return tuple(f"{role}_{suffix}" for role in ROLES)


def database_name(url: str) -> str:
    return sa.engine.make_url(to_sqlalchemy_url(url)).database


@dataclass
class Server:
    """A PostgreSQL server to make databases on: the embedded one we started (``handle``), or
    one someone else runs (the test session's)."""

    folder: Path
    admin_uri: str
    handle: object | None = None

    def admin_engine(self) -> sa.Engine:
        return sa.create_engine(to_sqlalchemy_url(self.admin_uri), isolation_level="AUTOCOMMIT")

    def fresh(self, tag: str = "") -> DatabaseUrls:
        return fresh_urls(self.admin_uri, tag)

    def migrated(self, tag: str = "") -> DatabaseUrls:
        """Fresh databases with the shop's baseline and our migrations: an empty shop."""
        urls = self.fresh(tag)
        migrate(urls, baseline=True)
        return urls

    def clone(self, template: DatabaseUrls, tag: str = "clone") -> DatabaseUrls:
        """Copies of the template's jobmanager and logs (CREATE DATABASE … TEMPLATE) and an
        empty Dagster database: the same rows, byte for byte, for a control and a disturbed run."""
        names = _names(tag)
        engine = self.admin_engine()
        try:
            with engine.connect() as conn:
                for new, old in zip(names[:2], (template.jobmanager, template.logs), strict=True):
                    conn.execute(
                        sa.text(f'CREATE DATABASE "{new}" TEMPLATE "{database_name(old)}"')
                    )
                conn.execute(sa.text(f'CREATE DATABASE "{names[2]}"'))
        finally:
            engine.dispose()
        return DatabaseUrls(*(database_url(self.admin_uri, n) for n in names))

    def drop(self, urls: DatabaseUrls) -> None:
        engine = self.admin_engine()
        try:
            with engine.connect() as conn:
                for url in (urls.jobmanager, urls.logs, urls.dagster):
                    conn.execute(
                        sa.text(f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')
                    )
        finally:
            engine.dispose()

    def demo_shop(self, scale: int, seed: int = 7, tag: str = "demo") -> tuple[DatabaseUrls, float]:
        """An empty shop filled by the demo generator at ``scale``; seconds the filling took."""
        from jobstatus_dagster.demo import generate_shop

        urls = self.migrated(tag)
        started = time.perf_counter()
        with engines(urls) as (jm, logs):
            generate_shop(jm, logs, scale=scale, seed=seed)
        return urls, time.perf_counter() - started


@contextmanager
def embedded_server(folder: Path | None = None, keep: bool = False) -> Iterator[Server]:
    """An embedded PostgreSQL in ``folder`` (default: a new temp folder), stopped afterwards; a
    temp folder is removed unless ``keep``."""
    temporary = folder is None
    root = Path(tempfile.mkdtemp(prefix="jobstatus-")) if folder is None else folder
    handle = start_embedded(root)
    try:
        yield Server(root, handle.get_uri("postgres"), handle)
    finally:
        try:
            handle.cleanup()
        except Exception as err:  # the folder goes anyway
            print(f"(stopping the embedded server: {err})", file=sys.stderr)
        if temporary and keep:
            print(f"kept {root}", file=sys.stderr)
        elif temporary:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def engines(urls: DatabaseUrls) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """Engines on the jobmanager and logs databases, disposed afterwards."""
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
    try:
        yield jm, logs
    finally:
        jm.dispose()
        logs.dispose()
