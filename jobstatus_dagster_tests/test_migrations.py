"""R1–R3: additive, idempotent migrations, separate from the shop's baseline."""

import hashlib
import re
import shutil
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from jobstatus_dagster import db
from jobstatus_dagster.cli import main
from jobstatus_dagster.db import (
    SQL_DIR,
    MigrationsNotFound,
    apply_migrations,
    migrate,
    to_sqlalchemy_url,
)
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


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(to_sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            return set(conn.execute(sa.text(query)).scalars())
    finally:
        engine.dispose()


def test_a_missing_or_empty_migration_folder_is_an_error_naming_it(
    pg_admin_uri, tmp_path, monkeypatch
) -> None:
    """yoyo reads a missing folder as no migrations: an installation without its migrations
    would apply nothing, silently. It is an error naming the folder, before anything applies."""
    urls = fresh_urls(pg_admin_uri)
    missing = tmp_path / "nowhere"
    with pytest.raises(MigrationsNotFound, match=f"{re.escape(str(missing))} does not exist"):
        apply_migrations(urls.jobmanager, missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README").write_text("no migration here")
    with pytest.raises(MigrationsNotFound, match=f"{re.escape(str(empty))} holds no migration"):
        apply_migrations(urls.logs, empty)

    # db.migrate reads every folder first: without the logs migrations, the jobmanager ones
    # are not applied either.
    partial = tmp_path / "sql"
    shutil.copytree(SQL_DIR / "jobmanager", partial / "jobmanager")
    monkeypatch.setattr(db, "SQL_DIR", partial)
    with pytest.raises(MigrationsNotFound, match=re.escape(str(partial / "logs"))):
        migrate(urls)
    assert _tables(urls.jobmanager) == set() and _tables(urls.logs) == set()


def test_jobstatus_migrate_without_migrations_fails_naming_the_folder(
    pg_admin_uri, tmp_path, monkeypatch
) -> None:
    urls = fresh_urls(pg_admin_uri)
    missing = tmp_path / "nowhere"
    monkeypatch.setattr(db, "SQL_DIR", missing)
    env = {
        "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
        "JOBSTATUS_LOGS_URL": urls.logs,
        "JOBSTATUS_DAGSTER_URL": urls.dagster,
        "JOBSTATUS_HOME": str(tmp_path / "home"),
        # Set by the command for its children: restored afterwards.
        "JOBSTATUS_DAGSTER_STORAGE_URL": None,
        "DAGSTER_HOME": None,
    }
    result = CliRunner().invoke(main, ["migrate", "--baseline"], env=env)

    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line == (
        f"Error: migration folder {missing / 'baseline' / 'jobmanager'} does not exist:"
        " the installation is incomplete; nothing applied"
    )
    assert _tables(urls.jobmanager) == set() and _tables(urls.logs) == set()


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
    # Every migration file of ours applies, in file order, over the shop's data (a
    # `.rollback.sql` is the undoing of its migration, run only by `--roll-back-after`).
    assert applied == {
        name: sorted(
            f.stem for f in (SQL_DIR / name).glob("*.sql") if not f.name.endswith(".rollback.sql")
        )
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
            # R1: never a column or a table; only an index of ours that replaced it (0013), and
            # our triggers that filled the outbox from the audit (0016: from the changes) and
            # from the changes (0020: the deliverer fills it).
            without_own_indexes = re.sub(
                r"DROP (INDEX IF EXISTS idx_\w+|TRIGGER IF EXISTS job_status_updates_outbox_\w+"
                r" ON job_status_updates|TRIGGER IF EXISTS job_status_changes_outbox"
                r" ON job_status_changes);",
                "",
                sql,
                flags=re.I,
            )
            assert not re.search(r"\bDROP\b", without_own_indexes, re.I), path
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


def _long_id(prefix: str, length: int = 4000) -> str:
    """An identifier that does not compress (Postgres would fit a repetitive one into a btree)."""
    text, block = prefix, prefix.encode()
    while len(text) < length:
        block = hashlib.sha256(block).digest()
        text += block.hex()
    return text[:length]


def _shop_inserts_long_ids(jm: sa.Engine, logs: sa.Engine, tag: str) -> None:
    """The shop's own INSERTs of a 4,000-character identifier into every table of its that we
    index (the baseline's own primary keys are short ids: they are the shop's, not ours)."""
    long = _long_id(tag)
    with logs.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id)"
                " VALUES (:id, :v, :v, :v)"
            ),
            {"id": f"{tag}-j", "v": long},
        )
        conn.execute(
            sa.text(
                "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
                " operation_id) VALUES (:id, :v, :v)"
            ),
            {"id": f"{tag}-i", "v": long},
        )
        conn.execute(
            sa.text("INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES (:v, :v)"),
            {"v": long},
        )
        conn.execute(
            sa.text(
                "INSERT INTO production_planner_paths (runlist_id, imposition_id, path)"
                " VALUES (:v, :v, :v)"
            ),
            {"v": long},
        )
    with jm.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "print OS" (name, status, job_name, item_id, marker)'
                " VALUES (:v, :v, :v, :v, 1)"
            ),
            {"v": long},
        )
        conn.execute(
            sa.text("INSERT INTO scanned_codes (code_text, machine_id) VALUES (:v, :v)"),
            {"v": long},
        )


def test_r1_migrations_accept_a_shop_table_holding_a_4000_character_id(pg_admin_uri) -> None:
    """R1: our migrations apply over shop tables that already hold a 4,000-character
    identifier, and afterwards the shop's own INSERT of another one is accepted."""
    urls = fresh_urls(pg_admin_uri)
    for name, url in (("jobmanager", urls.jobmanager), ("logs", urls.logs)):
        apply_migrations(url, SQL_DIR / "baseline" / name)
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
    try:
        _shop_inserts_long_ids(jm, logs, "held-before")
        applied = migrate(urls)
        assert applied["logs"] == sorted(f.stem for f in (SQL_DIR / "logs").glob("*.sql"))
        _shop_inserts_long_ids(jm, logs, "inserted-after")
        with logs.connect() as conn:
            btree_on_shop_text = conn.execute(
                sa.text(
                    "SELECT indexrelid::regclass::text FROM pg_index i"
                    " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam"
                    " WHERE i.indrelid IN ('job_operations'::regclass,"
                    " 'imposition_operations'::regclass) AND a.amname = 'btree'"
                    " AND indexrelid::regclass::text LIKE 'idx_%_key%'"
                )
            ).all()
        assert btree_on_shop_text == []
    finally:
        jm.dispose()
        logs.dispose()


def test_r1_an_install_that_had_the_btree_key_indexes_loses_them(pg_admin_uri) -> None:
    """R1: a database migrated before 0013 holds our btree indexes on the *_operations keys;
    0013 replaces them, after which the shop's INSERT of a long identifier is accepted."""
    urls = fresh_urls(pg_admin_uri)
    migrate(urls, baseline=True)
    logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
    jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    try:
        with logs.begin() as conn:  # the state 0001 and 0011 used to leave, and 0013 undone
            conn.execute(
                sa.text(
                    "CREATE INDEX idx_job_operations_key"
                    " ON job_operations (job_id, version_tag, operation_id);"
                    " CREATE INDEX idx_imposition_operations_key_trimmed ON imposition_operations"
                    " ((btrim(imposition_id, E' \\t\\n\\r')), (btrim(operation_id, E' \\t\\n\\r')));"
                    " DELETE FROM _yoyo_migration WHERE migration_id = '0013_operation_row_keys'"
                )
            )
        assert migrate(urls)["logs"] == ["0013_operation_row_keys"]
        _shop_inserts_long_ids(jm, logs, "after-upgrade")
    finally:
        jm.dispose()
        logs.dispose()


def test_r1_r4_operation_row_lookups_probe_the_hash_key_indexes(
    shop, instance, engines: tuple[sa.Engine, sa.Engine]
) -> None:
    """The writer's match reaches the hash index on each *_operations row's whole trimmed key
    (logs 0013): EXPLAIN of the writer's own UPDATE, run inside its transaction (its temp tables
    exist only there), over a few thousand shop rows."""
    _, logs = engines
    shop.execute(
        logs,
        "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id)"
        " SELECT 'bulk-' || n, n || '_' || n, '1', 'op001' FROM generate_series(1, 4000) n",
    )
    shop.execute(
        logs,
        "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
        " operation_id) SELECT 'bulk-' || n, 'BULK-' || n, 'op001' FROM generate_series(1, 4000) n",
    )
    shop.execute(logs, "ANALYZE job_operations; ANALYZE imposition_operations")
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", [f"FILE_1_Labex_{job}_1"])
    shop.print_event(f"{job}-A", "PRINTED")
    plans: dict[str, str] = {}

    def explain(conn, cursor, statement, parameters, context, executemany) -> None:
        match = re.match(r"\s*UPDATE \"(\w+_operations)\" o SET completed_at = t\.", statement)
        if match and match[1] not in plans:
            plans[match[1]] = ""
            # As the R4 test above: can the index serve the statement (a few thousand rows
            # are cheaper to hash whole; at 300,000 the planner probes it by itself, as it did
            # the btree this replaces, docs/decisions.md).
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {statement}", parameters)
            plans[match[1]] = "\n".join(r[0] for r in cursor.fetchall())
            cursor.execute("SET LOCAL enable_seqscan = on")

    sa.event.listen(sa.Engine, "before_cursor_execute", explain)
    try:
        shop.process(instance)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", explain)
    assert "idx_job_operations_row_key" in plans["job_operations"], plans["job_operations"]
    assert "idx_imposition_operations_row_key" in plans["imposition_operations"], plans[
        "imposition_operations"
    ]
