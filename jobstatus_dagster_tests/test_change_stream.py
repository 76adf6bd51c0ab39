"""R25, what a reader of changes sees: the two schedules of the audit (issue 19) where a reader
folding the feed or the webhooks ended up holding a state the tables did not, through the
product's planners and writer (jobstatus_testkit/convergence.py, no Dagster run)."""

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from jobstatus_dagster.core.plan import PRINT_OS, Window
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_testkit.changes import (
    delivered_changes,
    feed_changes,
    fold,
    fold_problems,
    held_state,
)
from jobstatus_testkit.convergence import OPERATION_IDS, T0, Env, ShopData, open_env

J = "300_400"
KEY = (J, "1", "print")
PRINT_OP = OPERATION_IDS["print"]


@pytest.fixture(scope="module")
def env(urls: DatabaseUrls) -> Iterator[Env]:
    with open_env(urls) as opened:
        yield opened


def at(hour: int) -> datetime:
    return T0.replace(hour=hour) + timedelta(days=1)


def two_file_job(*prints: tuple) -> ShopData:
    """J's files a and b in IMP-6 and IMP-5; ``prints`` are its "print OS" rows."""
    return ShopData(
        jobs=[J],
        in_jobs={J},
        files={"IMP-6": [f"FILE_1_Labex_{J}_a"], "IMP-5": [f"FILE_1_Labex_{J}_b"]},
        runlists={},
        job_ops={(J, "1", PRINT_OP): None},
        imposition_ops={("IMP-6", PRINT_OP): None, ("IMP-5", PRINT_OP): None},
        codes=dict(OPERATION_IDS),
        prints=list(prints),
        scans=[],
    )


def last_change(env: Env) -> dict:
    return [
        c for c in feed_changes(env.jm) if (c["job_id"], c["version_tag"], c["operation"]) == KEY
    ][-1]


def test_r25_two_events_in_one_write_end_on_the_state(env: Env) -> None:
    """One window holds id 1 (IMP-6, marker 15, 09:00) and id 2 (IMP-5, marker 5, 10:00): the
    state is completed, and so is the last change a reader gets, from the feed and by webhook
    (it was 'completed' then 'partial' in update_id order)."""
    data = two_file_job(
        (1, "IMP-6", "PRINTED", 15, at(9), at(9)),
        (2, "IMP-5", "PRINTED", 5, at(10), at(10)),
    )
    env.reset()
    env.write_reference(data)
    env.commit(data, [(PRINT_OS, 1), (PRINT_OS, 2)])
    env.write(env.plan(Window(PRINT_OS, 0, 20)))
    assert held_state(env.jm)[KEY]["status"] == "completed"
    assert fold(feed_changes(env.jm))[KEY]["status"] == "completed"
    assert fold(delivered_changes(env.jm, env.subscription_id))[KEY]["status"] == "completed"
    change = last_change(env)
    assert (change["printed_count"], change["total_count"], change["current"]) == (2, 2, True)
    assert (change["source_id"], change["source_marker"]) == (2, 5)  # the deciding event
    assert fold_problems(env.jm, env.subscription_id, "one write") == []


def test_r25_a_late_event_that_completes_a_job_is_a_new_change(env: Env) -> None:
    """The event printing file b (marker 2) is processed; the one printing file a (marker 1)
    commits late (R19) and is processed next. The audit row of the first is updated in place;
    the feed gets a new change saying completed (it never listed it again)."""
    data = two_file_job(
        (1, "IMP-6", "PRINTED", 1, at(9), at(9)),
        (2, "IMP-5", "PRINTED", 2, at(10), at(10)),
    )
    env.reset()
    env.write_reference(data)
    env.commit(data, [(PRINT_OS, 2)])
    env.drain(PRINT_OS)
    first = last_change(env)
    assert first["status"] == "partial"
    env.commit(data, [(PRINT_OS, 1)])
    env.drain(PRINT_OS)
    then = last_change(env)
    assert then["status"] == "completed" and then["update_id"] > first["update_id"]
    assert then["previous_update_id"] == first["update_id"]
    assert fold(feed_changes(env.jm))[KEY]["status"] == "completed"
    assert fold(delivered_changes(env.jm, env.subscription_id))[KEY]["status"] == "completed"
    assert fold_problems(env.jm, env.subscription_id, "late event") == []
    # R25: an unchanged re-run adds no change
    count = len(feed_changes(env.jm))
    env.backfill_all(PRINT_OS)
    assert len(feed_changes(env.jm)) == count


def test_r25_a_withdrawn_state_is_a_change(env: Env) -> None:
    """The shop deletes the only print event of the job (R22b): the key holds no state, the
    feed says so with a withdrawal that is the current change of the key."""
    data = two_file_job((1, "IMP-6", "ABORTED", 1, at(9), at(9)))
    env.reset()
    env.write_reference(data)
    env.commit(data, [(PRINT_OS, 1)])
    env.drain(PRINT_OS)
    assert last_change(env)["status"] == "aborted"
    assert env.delete_row(data, PRINT_OS, 0)
    env.backfill_all(PRINT_OS)
    gone = last_change(env)
    assert (gone["event"], gone["status"], gone["current"]) == ("withdrawn", None, True)
    assert KEY not in fold(feed_changes(env.jm)) and KEY not in held_state(env.jm)
    assert fold_problems(env.jm, env.subscription_id, "withdrawn") == []
