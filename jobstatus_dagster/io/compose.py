"""SQL composed by ``psycopg.sql`` and run through SQLAlchemy: identifiers are quoted by the
driver, constant SQL expressions of this package are marked as such, and values are always bound
parameters (``:name``), never part of the text."""

from __future__ import annotations

import sqlalchemy as sa
from psycopg import sql

from jobstatus_dagster.core.identifiers import row_key_sql, trimmed_sql

Identifier = sql.Identifier


def composed_text(template: str, **parts: sql.Composable) -> str:
    """``template`` (a constant) with its ``{name}`` placeholders filled by identifiers or
    constant expressions; ``{{``/``}}`` stand for literal braces."""
    return sql.SQL(template).format(**parts).as_string()


def composed(template: str, **parts: sql.Composable) -> sa.TextClause:
    """``composed_text`` as a SQLAlchemy statement (values bound as ``:name``)."""
    return sa.text(composed_text(template, **parts))


def statement(composable: sql.Composable) -> sa.TextClause:
    return sa.text(composable.as_string())


def expression(text: str) -> sql.SQL:
    """A constant SQL expression of this package (e.g. a select list): never built from input."""
    return sql.SQL(text)


def trimmed(column: sql.Identifier) -> sql.SQL:
    """R4: the column trimmed, as the migrations' expression indexes hold it."""
    return sql.SQL(trimmed_sql(column.as_string()))


def joined(separator: str, parts: list[sql.Composable]) -> sql.Composed:
    return sql.SQL(separator).join(parts)


def row_key(columns: list[sql.Identifier], *, trim: bool = True) -> sql.SQL:
    """R1/R4: a *_operations row's whole key as one value, as the hash indexes of logs migration
    0013 hold it (``trim=True``: the shop's columns, trimmed) or as a temp table holds it."""
    return sql.SQL(row_key_sql([c.as_string() for c in columns], trim=trim))
