"""Rolling back to an older jobstatus (README, "Deploying a new version"): its code must run on
the schema `jobstatus migrate --roll-back-after NNNN` leaves. Since 0020 the deliverer fills the
webhooks' outbox; the version before relied on a trigger that 0020 drops, so rolling back past
0020 must bring the trigger back and queue what was owed (review of issue 19)."""

from pathlib import Path

import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.io import outbox
from jobstatus_testkit.changes import add_change
from jobstatus_testkit.cli import run_cli
from jobstatus_testkit.databases import fresh_urls

# What the version before 0020 reads to decide a delivery run is due (its webhook_sensor) and
# what its deliverer sends: only outbox rows; it never queues changes itself.
PREVIOUS_DUE_NOW = sa.text(
    "SELECT EXISTS (SELECT 1 FROM webhook_outbox WHERE state = 'pending'"
    " AND next_attempt_at <= now())"
)


def owed(conn: sa.Connection, subscription_id: int) -> list[int]:
    rows = conn.execute(
        sa.text(
            "SELECT change_id FROM webhook_outbox WHERE subscription_id = :s ORDER BY outbox_id"
        ),
        {"s": subscription_id},
    )
    return list(rows.scalars())


def test_rolling_back_past_0020_the_older_version_still_delivers(
    pg_admin_uri: str, tmp_path: Path
) -> None:
    urls: DatabaseUrls = fresh_urls(pg_admin_uri)
    assert run_cli(urls, tmp_path, "migrate", "--baseline").returncode == 0
    engine = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    try:
        with engine.begin() as conn:
            hook = outbox.create_subscription(conn, "https://mis.example/h", "s", None)["id"]
            coating = outbox.create_subscription(conn, "https://mis.example/c", "s", ["coating"])[
                "id"
            ]
        with engine.begin() as conn:  # this version's writer: nothing queued yet
            before = [add_change(conn, "7300_1", "print", source_id=9300001)]
        with engine.connect() as conn:
            assert owed(conn, hook) == [] and not conn.execute(PREVIOUS_DUE_NOW).scalar_one()

        rolled = run_cli(urls, tmp_path, "migrate", "--roll-back-after", "19")
        assert rolled.returncode == 0, rolled.stderr[-3000:]
        assert "jobmanager: rolled back 0020_outbox_filled_by_the_deliverer" in rolled.stdout

        with engine.begin() as conn:  # the older version's writer commits a change
            after = [add_change(conn, "7301_1", "coating", source_id=9300002)]
        with engine.connect() as conn:
            # what was owed before the rollback, and what the older writer committed, in order
            assert owed(conn, hook) == before + after
            assert owed(conn, coating) == after
            assert conn.execute(PREVIOUS_DUE_NOW).scalar_one()
            assert outbox.subscriptions_due(conn) == [hook, coating]

        # Upgrading again: 0020 re-applied; nothing owed twice, the next change queued once.
        again = run_cli(urls, tmp_path, "migrate")
        assert again.returncode == 0 and "0020_outbox_filled_by_the_deliverer" in again.stdout
        with engine.begin() as conn:
            later = [add_change(conn, "7302_1", "print", source_id=9300003)]
            outbox.enqueue_changes(conn)
        with engine.connect() as conn:
            assert owed(conn, hook) == before + after + later
    finally:
        engine.dispose()


def test_a_rollback_stopped_before_yoyo_forgets_0020_owes_nothing_twice_after_migrate(
    pg_admin_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yoyo.backends.base import DatabaseBackend

    from jobstatus_dagster.db import SQL_DIR, roll_back_folder

    urls: DatabaseUrls = fresh_urls(pg_admin_uri)
    assert run_cli(urls, tmp_path, "migrate", "--baseline").returncode == 0
    engine = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
    try:
        with engine.begin() as conn:
            hook = outbox.create_subscription(conn, "https://mis.example/h", "s", None)["id"]

        def lost(self, migration, log=True):  # the connection drops after the steps committed
            raise ConnectionError("server closed the connection unexpectedly")

        with monkeypatch.context() as patched:
            patched.setattr(DatabaseBackend, "unmark_one", lost)
            with pytest.raises(ConnectionError):
                roll_back_folder(urls.jobmanager, SQL_DIR / "jobmanager", 19)

        # yoyo still counts 0020 as applied: `jobstatus migrate` finds the trigger back and runs
        # 0020 again (found by review 3: before, both the trigger and the deliverer queued).
        again = run_cli(urls, tmp_path, "migrate")
        assert again.returncode == 0, again.stderr[-2000:]
        with engine.begin() as conn:
            change = add_change(conn, "7400_1", "print", source_id=9400001)
        with engine.begin() as conn:
            outbox.enqueue_changes(conn)
        with engine.connect() as conn:
            owed = list(
                conn.execute(
                    sa.text("SELECT change_id FROM webhook_outbox WHERE subscription_id = :s"),
                    {"s": hook},
                ).scalars()
            )
        assert owed == [change], f"change {change} owed {owed.count(change)} times: {owed}"
    finally:
        engine.dispose()
