"""What the API and CLI put into Dagster's queue, on an instance no daemon serves (so nothing
runs and the queue can be read as it was left): backfills over the marker ranges that hold rows
(R21), and requests that wait for the runs already queued instead of queuing them again."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import httpx
import pytest

from jobstatus_dagster.api import create_app
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.pipeline import queue
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.databases import fresh_urls
from jobstatus_testkit.serving import serve

WIDTH = 100


@pytest.fixture
def idle(pg_admin_uri: str, tmp_path: Path):
    """A Dagster instance of its own that no daemon serves."""
    alone = fresh_urls(pg_admin_uri).dagster
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=instance_overrides(alone)) as inst:
        yield inst


@pytest.fixture(scope="module")
def sparse(urls: DatabaseUrls) -> Shop:
    """Print rows far apart: markers 5, 7, 250 and 1,000,000,050 (ranges of WIDTH markers)."""
    shop = Shop(urls, partition_width=WIDTH, chunk_size=2)
    for marker in (5, 7, 250, 1_000_000_050):
        shop.print_event("Q-I1", "PRINTED", marker=marker)
    return shop


def test_r21_a_backfill_runs_the_ranges_holding_rows_not_every_range_from_zero(
    sparse: Shop, idle: dg.DagsterInstance
) -> None:
    backfill_id, ranges = queue.submit_backfill(
        sparse.definitions(), idle, "print_os", -1, 2_000_000_000, "test"
    )
    assert ranges == [
        "000000000000-000000000100",
        "000000000200-000000000300",
        "001000000000-001000000100",
    ]
    (backfill,) = idle.get_backfills()
    assert backfill.backfill_id == backfill_id
    key = dg.AssetKey("print_os_processing")
    targeted = backfill.asset_backfill_data.target_subset.get_partitions_subset(key)
    assert sorted(targeted.get_partition_keys()) == ranges

    nothing, none = queue.submit_backfill(sparse.definitions(), idle, "print_os", 300, 900, "test")
    assert (nothing, none) == (None, [])
    assert len(idle.get_backfills()) == 1


def test_a_request_waits_for_the_runs_already_queued_instead_of_queuing_them_again(
    sparse: Shop, idle: dg.DagsterInstance
) -> None:
    first = queue.submit_source(sparse.definitions(), idle, "print_os", "test")
    assert len(first.run_ids) >= 2  # chunks of two rows, ranges apart: several windows
    assert all(
        idle.get_run_by_id(run_id).status == dg.DagsterRunStatus.QUEUED for run_id in first.run_ids
    )

    again = queue.submit_source(sparse.definitions(), idle, "print_os", "test")
    assert again.run_ids == first.run_ids
    assert idle.get_runs_count() == len(first.run_ids)

    sparse.print_event("Q-I1", "PRINTED", marker=1_000_000_060)  # new rows past every window
    more = queue.submit_source(sparse.definitions(), idle, "print_os", "test")
    assert more.run_ids[: len(first.run_ids)] == first.run_ids
    (added,) = more.run_ids[len(first.run_ids) :]
    assert more.windows[added] == "print_os:1000000050-1000000060"


def test_requests_waiting_for_their_runs_do_not_hold_up_other_requests(
    sparse: Shop, idle: dg.DagsterInstance, urls: DatabaseUrls
) -> None:
    """More waiting processing requests than the server has worker threads (40), on an instance
    no daemon serves: a read asked while they all wait answers before any of them does.

    Order, not seconds: every waiting request was sent before the read was asked, and the read
    answered before the first of them answered (each answers 202 once its wait is over). When
    the waiting requests held the worker threads, the read answered only after some of them."""
    app = create_app(
        sparse.definitions(), idle, urls.jobmanager, urls.logs, token="w", read_token="r"
    )
    waiting = 45
    sent = threading.Semaphore(0)
    with serve(app) as url:

        def waiting_request(_: int) -> tuple[int, float]:
            sent.release()
            answer = httpx.post(
                f"{url}/api/process-status-updates",
                json={"wait": 15},
                headers={"Authorization": "Bearer w"},
                timeout=120,
            )
            return answer.status_code, time.monotonic()

        with ThreadPoolExecutor(max_workers=waiting) as pool:
            answers = pool.map(waiting_request, range(waiting))
            for _ in range(waiting):
                sent.acquire()
            time.sleep(1)  # for the last ones to reach the server: not a measurement
            read = httpx.get(f"{url}/api/health", timeout=120)
            read_answered = time.monotonic()
            answers = list(answers)
    assert read.status_code == 200
    assert {status for status, _ in answers} == {202}
    first_waiting_answer = min(answered for _, answered in answers)
    assert read_answered < first_waiting_answer, "the read waited behind the waiting requests"
