"""Webhooks against a receiver the test runs on 127.0.0.1: the outbox is written with the audit
(R18), bodies are signed, failures are retried with the same delivery id, nothing is lost while
the receiver is down, a job's changes arrive in order, and a delivery gives up visibly."""

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import sqlalchemy as sa

from jobstatus_dagster.pipeline.resources import PostgresDatabase
from jobstatus_dagster.pipeline.webhooks import (
    WebhookDelivery,
    deliver_due,
    deliver_webhooks_job,
)
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.changes import add_change
from jobstatus_testkit.serving import free_port

SECRET = "receiver-s3cret"
FAST = WebhookDelivery(backoff_seconds=0.001, backoff_max_seconds=0.001, timeout_seconds=2)


class Receiver:
    """Records every POST; answers the queued status codes first, then 200."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.answers: list[int] = []
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.received.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                            "status": status,
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    @contextmanager
    def up(self, port: int) -> Iterator[None]:
        server = ThreadingHTTPServer(("127.0.0.1", port), self.handler())
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()

    def accepted(self) -> list[dict]:
        return [r for r in self.received if r["status"] == 200]


def subscribe(shop: Shop, url: str, operations: list[str] | None = None) -> int:
    with shop.jm.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO webhook_subscriptions (url, secret, operations)"
                " VALUES (:u, :s, :o) RETURNING subscription_id"
            ),
            {"u": url, "s": SECRET, "o": operations},
        ).scalar_one()


def outbox(shop: Shop, subscription_id: int) -> list[dict]:
    return shop.rows(
        shop.jm,
        "SELECT o.*, jobstatus_delivery_body(o) AS payload FROM webhook_outbox o"
        " WHERE subscription_id = :s ORDER BY outbox_id",
        s=subscription_id,
    )


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers["X-Jobstatus-Signature"])


def drain(shop: Shop, settings: WebhookDelivery = FAST, rounds: int = 50) -> None:
    for _ in range(rounds):
        deliver_due(shop.jm, settings)
        pending = shop.scalar(
            shop.jm, "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'"
        )
        if pending == 0:
            return
    raise AssertionError("deliveries still pending")


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def hooked_shop(shop: Shop, instance: dg.DagsterInstance, port: int) -> tuple[Shop, int, int]:
    """Subscriptions made before processing: every change lands in the outbox with its audit."""
    everything = subscribe(shop, f"http://127.0.0.1:{port}/hook")
    coating = subscribe(shop, f"http://127.0.0.1:{port}/coating", ["coating"])
    fill_small_backlog(shop)
    shop.process(instance, "print_os")
    shop.process(instance, "scanner")
    return shop, everything, coating


def test_r18_outbox_rows_are_the_changes_committed_with_them(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    """R25: the webhooks deliver the change stream, each change once per subscription."""
    shop, everything, coating = hooked_shop
    changes = shop.rows(
        shop.jm, "SELECT change_id, operation, event FROM job_status_changes ORDER BY change_id"
    )
    rows = outbox(shop, everything)
    assert changes and [r["update_id"] for r in rows] == [c["change_id"] for c in changes]
    assert [r["event"] for r in rows] == [c["event"] for c in changes]
    assert [r["update_id"] for r in outbox(shop, coating)] == [
        c["change_id"] for c in changes if c["operation"] == "coating"
    ]
    # A change that never commits is never owed to anyone.
    before = len(rows)
    with shop.jm.connect() as conn, conn.begin():
        add_change(conn, "7001_1", source_id=8000001)
        conn.rollback()
    assert len(outbox(shop, everything)) == before


def test_receiver_down_then_up_gets_everything_signed_in_order_per_job_with_stable_ids(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, everything, coating = hooked_shop
    receiver = Receiver()
    # Nobody listens on the port: every attempt fails, and waits its backoff.
    down = deliver_due(shop.jm, WebhookDelivery(backoff_seconds=3600, timeout_seconds=2))
    assert down.delivered == 0 and down.failed_attempts > 0
    assert deliver_due(shop.jm, FAST).failed_attempts == 0, "nothing is due before its backoff"
    shop.execute(shop.jm, "UPDATE webhook_outbox SET next_attempt_at = now()")  # time passes
    receiver.answers = [500, 500]  # and when it comes back, it first fails twice
    with receiver.up(port):
        drain(shop)
    owed = outbox(shop, everything) + outbox(shop, coating)
    accepted = receiver.accepted()
    assert sorted(r["headers"]["X-Jobstatus-Delivery"] for r in accepted) == sorted(
        str(r["delivery_id"]) for r in owed
    ), "each delivery acknowledged exactly once, none lost"
    for request in receiver.received:
        assert verify(SECRET, request["headers"], request["body"])
        payload = json.loads(request["body"])
        assert payload["delivery_id"] == request["headers"]["X-Jobstatus-Delivery"]
        assert str(payload["update_id"]) == request["headers"]["X-Jobstatus-Update-Id"]
    refused = [r for r in receiver.received if r["status"] == 500]
    retried = {r["headers"]["X-Jobstatus-Delivery"] for r in refused}
    assert retried <= {r["headers"]["X-Jobstatus-Delivery"] for r in accepted}
    by_receiver_and_job: dict[tuple[str, str], list[int]] = {}
    for request in accepted:
        payload = json.loads(request["body"])
        key = (request["path"], payload["job_id"])
        by_receiver_and_job.setdefault(key, []).append(payload["update_id"])
    assert any(len(ids) > 1 for ids in by_receiver_and_job.values())
    for ids in by_receiver_and_job.values():
        assert ids == sorted(ids), "a job's changes arrive in order"
    attempts = shop.rows(
        shop.jm,
        "SELECT o.delivery_id, count(a.*) AS n, bool_or(a.status_code = 500) AS saw_500,"
        " bool_or(a.status_code IS NULL) AS saw_refused FROM webhook_outbox o"
        " JOIN webhook_attempts a USING (outbox_id) GROUP BY o.delivery_id",
    )
    assert all(a["n"] >= 2 for a in attempts if a["saw_500"])
    assert any(a["saw_refused"] for a in attempts)
    assert {r["state"] for r in owed} == {"delivered"}


def test_a_job_s_later_change_waits_for_its_earlier_one(
    hooked_shop: tuple[Shop, int, int], port: int, instance: dg.DagsterInstance
) -> None:
    shop, everything, _ = hooked_shop
    done = {r["outbox_id"] for r in outbox(shop, everything)}
    with shop.jm.begin() as conn:
        add_change(conn, "7002_2", "kiss_cut", "partial", source_id=8000010)
        add_change(conn, "7002_2", "kiss_cut", "completed", source_id=8000011)
    receiver = Receiver()
    receiver.answers = [500]
    with receiver.up(port):
        deliver_due(shop.jm, WebhookDelivery(backoff_seconds=60, timeout_seconds=2))
        assert len(receiver.received) == 1, "the second change of the job waits for the first"
        shop.execute(shop.jm, "UPDATE webhook_outbox SET next_attempt_at = now()")
        drain(shop)
    new = [r for r in outbox(shop, everything) if r["outbox_id"] not in done]
    sent = [json.loads(r["body"])["update_id"] for r in receiver.accepted()]
    assert sent == [r["update_id"] for r in new]


def test_a_delivery_gives_up_after_the_limit_and_the_dagster_run_says_so(
    hooked_shop: tuple[Shop, int, int], instance: dg.DagsterInstance
) -> None:
    shop, _, _ = hooked_shop
    dead = subscribe(shop, f"http://127.0.0.1:{free_port()}/nobody")
    with shop.jm.begin() as conn:
        add_change(conn, "7003_3", source_id=8000020)
    limit = 3
    settings = WebhookDelivery(
        max_attempts=limit, backoff_seconds=0.001, backoff_max_seconds=0.001, timeout_seconds=1
    )
    run = deliver_webhooks_job.execute_in_process(
        instance=instance,
        resources={
            "jobmanager": PostgresDatabase(url=shop.urls.jobmanager),
            "webhooks": settings,
        },
        raise_on_error=False,
    )
    gave_up = outbox(shop, dead)
    assert [r["state"] for r in gave_up] == ["failed"]
    assert gave_up[0]["attempts"] == limit
    assert gave_up[0]["last_error"].startswith(f"gave up after {limit} attempts")
    assert not run.success
    failure = run.failure_data_for_node("deliver_due_webhooks")
    assert failure is not None and "given up" in failure.error.message
    attempts = shop.scalar(
        shop.jm,
        "SELECT count(*) FROM webhook_attempts a JOIN webhook_outbox o USING (outbox_id)"
        " WHERE o.subscription_id = :s",
        s=dead,
    )
    assert attempts == limit


def only_subscriptions(shop: Shop, *urls: str) -> list[int]:
    """Earlier tests' subscriptions are deleted (their pending deliveries given up)."""
    shop.execute(
        shop.jm,
        "UPDATE webhook_outbox SET state = 'failed', finished_at = now() WHERE state = 'pending'",
    )
    shop.execute(shop.jm, "UPDATE webhook_subscriptions SET deleted_at = now()")
    return [subscribe(shop, url) for url in urls]


def add_changes(shop: Shop, first_source_id: int, jobs: int) -> None:
    """One applied change for each of ``jobs`` distinct jobs: each is the head of its queue."""
    with shop.jm.begin() as conn:
        for i in range(jobs):
            add_change(conn, f"{7100 + i}_1", source_id=first_source_id + i)


def test_an_undeliverable_url_is_a_failed_attempt_and_blocks_nobody_else(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    # Stored before the API validated URLs (or written by hand): httpx raises InvalidURL,
    # which is not an httpx.HTTPError.
    bad, good = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/x\n", f"http://127.0.0.1:{port}/good"
    )
    add_changes(shop, 8000100, 2)
    receiver = Receiver()
    with receiver.up(port):
        report = deliver_due(shop.jm, WebhookDelivery(backoff_seconds=3600, timeout_seconds=2))
    assert report.delivered == 2 and report.failed_attempts == 2
    assert {r["state"] for r in outbox(shop, good)} == {"delivered"}
    failed = outbox(shop, bad)
    assert [(r["state"], r["attempts"]) for r in failed] == [("pending", 1), ("pending", 1)]
    assert all("InvalidURL" in r["last_error"] for r in failed)
    reasons = shop.rows(
        shop.jm,
        "SELECT a.error FROM webhook_attempts a JOIN webhook_outbox o USING (outbox_id)"
        " WHERE o.subscription_id = :s",
        s=bad,
    )
    assert len(reasons) == 2 and all("InvalidURL" in r["error"] for r in reasons)


class SlowReceiver(Receiver):
    """Answers after ``delay`` seconds: longer than the deliverer's timeout."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def handler(self) -> type[BaseHTTPRequestHandler]:
        base = super().handler()
        delay = self.delay

        class Handler(base):  # type: ignore[valid-type, misc]
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/slow"):
                    time.sleep(delay)
                super().do_POST()

        return Handler


def test_a_slow_receiver_neither_holds_up_others_nor_overruns_the_run(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    slow, fast = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/slow", f"http://127.0.0.1:{port}/fast"
    )
    jobs = 16
    add_changes(shop, 8000200, jobs)
    settings = WebhookDelivery(
        backoff_seconds=3600, timeout_seconds=0.3, run_seconds=3.0, attempts_per_subscription=4
    )
    receiver = SlowReceiver(delay=1.5)
    with receiver.up(port):
        started = time.monotonic()
        report = deliver_due(shop.jm, settings)
        took = time.monotonic() - started
    # Deadline checked before each attempt: at most one timeout past run_seconds (plus slack
    # for a busy machine), not one per slow delivery.
    assert took < settings.run_seconds + settings.timeout_seconds + 2.0, took
    assert {r["state"] for r in outbox(shop, fast)} == {"delivered"}, "fast got everything"
    assert report.delivered == jobs
    slow_rows = outbox(shop, slow)
    assert {r["state"] for r in slow_rows} == {"pending"}
    tried = [r for r in slow_rows if r["attempts"] > 0]
    assert 1 <= len(tried) < jobs, "what was not attempted stays pending for the next pass"
    assert all(r["attempts"] == 1 for r in tried)


def test_payload_times_are_utc_with_z(hooked_shop: tuple[Shop, int, int]) -> None:
    shop, _, _ = hooked_shop
    (hook,) = only_subscriptions(shop, "http://127.0.0.1:9/times")
    with shop.jm.begin() as conn:
        add_change(
            conn, "7300_1", source_id=8000300, event_time=datetime(2026, 11, 30, 4, 0, 0, 500000)
        )
        add_change(conn, "7300_1", "coating", None)
    payloads = [r["payload"] for r in outbox(shop, hook)]
    assert [p["event"] for p in payloads] == ["status", "withdrawn"]
    status, withdrawn = payloads
    assert status["event_time"] == "2026-11-30T04:00:00.5Z"
    assert withdrawn["event_time"] is None and withdrawn["status"] is None
    assert withdrawn["previous_change_id"] == status["change_id"] == withdrawn["change_id"] - 1
    recorded = shop.scalar(
        shop.jm,
        "SELECT recorded_at FROM job_status_changes WHERE change_id = :c",
        c=withdrawn["change_id"],
    )
    # The same instant (the payload drops trailing zeros of the fraction, as in "00.5Z").
    assert withdrawn["recorded_at"].endswith("Z")
    assert datetime.fromisoformat(withdrawn["recorded_at"]) == recorded.replace(tzinfo=UTC)


def test_update_ids_come_from_the_column_s_own_sequence_named_directly(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    shop, _, _ = hooked_shop
    sequence = shop.scalar(
        shop.jm, "SELECT pg_get_serial_sequence('job_status_updates', 'update_id')"
    )
    source = shop.scalar(
        shop.jm, "SELECT prosrc FROM pg_proc WHERE proname = 'jobstatus_draw_update_id'"
    )
    assert "pg_get_serial_sequence" not in source, "no per-row catalog lookup"
    assert f"nextval('{sequence.removeprefix('public.')}'::regclass)" in source
    before = shop.scalar(shop.jm, f"SELECT last_value FROM {sequence}")
    shop.execute(
        shop.jm,
        "INSERT INTO job_status_updates (source_type, source_id, job_id, version_tag, operation,"
        " status) VALUES ('scanner', 8000400, '7400_1', '1', 'coating', 'completed')",
    )
    drawn = shop.scalar(
        shop.jm, "SELECT update_id FROM job_status_updates WHERE source_id = 8000400"
    )
    assert drawn == shop.scalar(shop.jm, f"SELECT last_value FROM {sequence}") > before
