"""R25 at its edges, from the adversarial review of issue 19: an install upgraded to 0016 (its\nstream starts empty), a key that comes back after a withdrawal, a print decided by a scan."""

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from jobstatus_dagster.core.plan import PRINT_OS
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster_tests.test_change_stream import KEY, at, two_file_job
from jobstatus_testkit.changes import feed_changes, fold, held_state
from jobstatus_testkit.convergence import Env, ShopData, open_env


@pytest.fixture(scope="module")
def env(urls: DatabaseUrls) -> Iterator[Env]:
    with open_env(urls) as opened:
        yield opened


def upgraded_install(env: Env) -> ShopData:
    """J aborted and processed, then the install as 0016 leaves it: the state tables populated,
    the stream's own tables (and its outbox rows) empty."""
    data = two_file_job((1, "IMP-6", "ABORTED", 1, at(9), at(9)))
    env.reset()
    env.write_reference(data)
    env.commit(data, [(PRINT_OS, 1)])
    env.drain(PRINT_OS)
    with env.jm.begin() as c:
        c.execute(sa.text("DELETE FROM webhook_outbox WHERE change_id IS NOT NULL"))
        c.execute(sa.text("DELETE FROM job_status_changes"))
        c.execute(sa.text("DELETE FROM job_version_state"))
        # 0020 on an install whose stream is empty: subscriptions start at its beginning
        c.execute(sa.text("UPDATE webhook_subscriptions SET enqueued_up_to = 0"))
    return data


def test_r25_upgrade_a_key_processed_before_0016_is_withdrawn_on_the_feed(env: Env) -> None:
    """An install processed job J before 0016 (its audit-row feed said 'aborted'). 0016 creates
    job_version_state and job_status_changes empty and seeds neither. The shop deletes the
    event and a backfill withdraws the state: the stream must say so, or a reader that followed
    the feed keeps 'aborted' forever (and a reader starting at 0 never learns of any state
    processed before the upgrade)."""
    upgraded_install(env)
    with env.jm.connect() as c:
        print_state = c.execute(sa.text("SELECT status FROM job_print_state")).scalars().all()
    assert print_state == ["aborted"]
    assert KEY not in fold(feed_changes(env.jm))
    # README/decisions: after the upgrade a whole-source backfill publishes every key's state
    env.backfill_all(PRINT_OS)
    assert fold(feed_changes(env.jm))[KEY]["status"] == "aborted"


def test_r25_upgrade_withdrawal_of_a_pre_0016_key_is_published(env: Env) -> None:
    data = upgraded_install(env)
    assert env.delete_row(data, PRINT_OS, 0)
    env.backfill_all(PRINT_OS)
    with env.jm.connect() as c:
        left = c.execute(
            sa.text("SELECT status FROM job_print_state WHERE status IS NOT NULL")
        ).all()
    assert left == [] and KEY not in held_state(env.jm)
    withdrawn = [c for c in feed_changes(env.jm) if c["event"] == "withdrawn"]
    assert withdrawn, "the withdrawal of a key processed before 0016 never reaches the stream"


def test_r25_a_key_that_comes_back_after_a_withdrawal_cites_the_withdrawal(env: Env) -> None:
    """0016 documents previous_change_id as 'the key's change before this one; NULL: its first'.
    A key withdrawn and then given a state again gets previous_change_id NULL (the LEFT JOIN on
    job_version_state finds nothing once the withdrawal deleted the row): a reader checking the
    chain (or believing NULL means 'first') is misled."""
    data = two_file_job(
        (1, "IMP-6", "ABORTED", 1, at(9), at(9)),
        (2, "IMP-5", "PRINTED", 2, at(10), at(10)),
    )
    env.reset()
    env.write_reference(data)
    env.commit(data, [(PRINT_OS, 1)])
    env.drain(PRINT_OS)
    assert env.delete_row(data, PRINT_OS, 0)
    env.backfill_all(PRINT_OS)
    withdrawal = [c for c in feed_changes(env.jm) if c["event"] == "withdrawn"][-1]
    env.commit(data, [(PRINT_OS, 2)])
    env.drain(PRINT_OS)
    back = [c for c in feed_changes(env.jm)][-1]
    assert back["event"] == "status" and back["update_id"] > withdrawal["update_id"]
    assert back["previous_update_id"] == withdrawal["update_id"], back


def test_r25_scan_decided_print_then_printos_then_withdrawn(env: Env) -> None:
    from dataclasses import replace

    from jobstatus_dagster.core.plan import SCANNER
    from jobstatus_dagster_tests.test_change_stream import PRINT_OP
    from jobstatus_testkit.changes import fold_problems
    from jobstatus_testkit.convergence import job_operation_id

    data = replace(
        two_file_job((1, "IMP-6", "ABORTED", 1, at(9), at(9))),
        scans=[(1, "300_400_1", at(8), '["print"]')],
    )
    env.reset()
    env.write_reference(data)
    seen = []

    def step(label: str) -> None:
        with env.logs.connect() as c:
            logs = c.execute(
                sa.text(
                    "SELECT status, completed_by FROM job_operations WHERE job_operation_id = :k"
                ),
                {"k": job_operation_id("300_400", "1", PRINT_OP)},
            ).one()
        held = fold(feed_changes(env.jm)).get(KEY)
        seen.append((label, held and (held["status"], held["source_type"]), tuple(logs)))
        assert fold_problems(env.jm, env.subscription_id, label) == []

    env.commit(data, [(SCANNER, 1)])
    env.drain(SCANNER)
    step("scan")
    env.commit(data, [(PRINT_OS, 1)])
    env.drain(PRINT_OS)
    step("printos")
    assert env.delete_row(data, PRINT_OS, 0)
    env.backfill_all(PRINT_OS)
    step("withdrawn")
    for _label, held, logs in seen:
        assert held is not None and held[1] == logs[1], seen
