"""Webhooks against receivers the test runs on 127.0.0.1: the outbox is written with the audit
(R18), bodies are signed as Standard Webhooks say (every delivery any receiver here gets is
verified with the `standardwebhooks` package), failures are retried with the same webhook-id,
nothing is lost while a receiver is down, a job's changes arrive in order, a delivery gives up
visibly, and no receiver (slow, trickling, huge, gone, busy, down) can hold up the others."""

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
import sqlalchemy as sa
import standardwebhooks

from jobstatus_dagster.api_integration import WebhookState
from jobstatus_dagster.config import Settings
from jobstatus_dagster.core.webhooks import new_secret
from jobstatus_dagster.definitions import definitions_from_settings
from jobstatus_dagster.io import outbox as outbox_io
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

SECRET = new_secret()
# Every receiver here is on 127.0.0.1: private targets are allowed, as in `jobstatus dev`.
FAST = WebhookDelivery(
    backoff_seconds=0.001, backoff_max_seconds=0.001, timeout_seconds=2, allow_private=True
)


def standard_verified(secrets: list[str], headers: dict, body: bytes) -> bool:
    """What a Standard Webhooks receiver does: the package checks the signature over
    id.timestamp.body with any of its secrets, and that the timestamp is recent."""
    for secret in secrets:
        try:
            standardwebhooks.Webhook(secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            continue
        return True
    return False


class Receiver:
    """Records every POST, verified with `standardwebhooks`; answers the queued answers first
    (a status, or a status and headers; those queued for the request's path before the others),
    then 200. Leaving ``up`` asserts that every delivery it got was verified."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = secrets or [SECRET]
        self.received: list[dict] = []
        self.answers: list[int | tuple[int, dict[str, str]]] = []
        self.answers_for: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    def respond(self, handler: BaseHTTPRequestHandler, status: int, headers: dict) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                with receiver.lock:
                    queue = receiver.answers_for.get(self.path) or receiver.answers
                    answer = queue.pop(0) if queue else 200
                    status, extra = answer if isinstance(answer, tuple) else (answer, {})
                    receiver.received.append(
                        {
                            "path": self.path,
                            "headers": headers,
                            "body": body,
                            "status": status,
                            "verified": standard_verified(receiver.secrets, headers, body),
                            "at": time.time(),
                        }
                    )
                receiver.respond(self, status, extra)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    @contextmanager
    def up(self, port: int) -> Iterator[None]:
        server = ThreadingHTTPServer(("127.0.0.1", port), self.handler())
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()
        unverified = [r["path"] for r in self.received if not r["verified"]]
        assert not unverified, f"deliveries standardwebhooks did not verify: {unverified}"

    def accepted(self) -> list[dict]:
        return [r for r in self.received if r["status"] == 200]


def subscribe(
    shop: Shop, url: str, operations: list[str] | None = None, secret: str = SECRET
) -> int:
    with shop.jm.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO webhook_subscriptions (url, secret, operations)"
                " VALUES (:u, :s, :o) RETURNING subscription_id"
            ),
            {"u": url, "s": secret, "o": operations},
        ).scalar_one()


def outbox(shop: Shop, subscription_id: int) -> list[dict]:
    """The subscription's outbox once the deliverer has queued the changes so far."""
    with shop.jm.begin() as conn:
        outbox_io.enqueue_changes(conn)
    return shop.rows(
        shop.jm,
        "SELECT o.*, jobstatus_delivery_body(o) AS payload FROM webhook_outbox o"
        " WHERE subscription_id = :s ORDER BY outbox_id",
        s=subscription_id,
    )


def legacy_verified(secret: str, headers: dict, body: bytes) -> bool:
    """What a receiver written before Standard Webhooks does: the HMAC of the raw body."""
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
    down = deliver_due(
        shop.jm, WebhookDelivery(backoff_seconds=3600, timeout_seconds=2, allow_private=True)
    )
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
        assert legacy_verified(SECRET, request["headers"], request["body"]), "older receivers"
        payload = json.loads(request["body"])
        assert payload["delivery_id"] == request["headers"]["X-Jobstatus-Delivery"]
        assert request["headers"]["webhook-id"] == request["headers"]["X-Jobstatus-Delivery"]
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
        deliver_due(
            shop.jm, WebhookDelivery(backoff_seconds=60, timeout_seconds=2, allow_private=True)
        )
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
        max_attempts=limit,
        backoff_seconds=0.001,
        backoff_max_seconds=0.001,
        timeout_seconds=1,
        allow_private=True,
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
        report = deliver_due(
            shop.jm, WebhookDelivery(backoff_seconds=3600, timeout_seconds=2, allow_private=True)
        )
    assert report.delivered == 2 and report.failed_attempts == 1
    assert {r["state"] for r in outbox(shop, good)} == {"delivered"}
    failed = outbox(shop, bad)
    # After its failure the subscription rests for the delivery's backoff: one attempt.
    assert [(r["state"], r["attempts"]) for r in failed] == [("pending", 1), ("pending", 0)]
    assert "InvalidURL" in failed[0]["last_error"]
    reasons = shop.rows(
        shop.jm,
        "SELECT a.error FROM webhook_attempts a JOIN webhook_outbox o USING (outbox_id)"
        " WHERE o.subscription_id = :s",
        s=bad,
    )
    assert len(reasons) == 1 and "InvalidURL" in reasons[0]["error"]


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


# ----- Standard Webhooks ------------------------------------------------------------------
def attempts_of(shop: Shop, subscription_id: int) -> list[dict]:
    return shop.rows(
        shop.jm,
        "SELECT a.*, o.delivery_id FROM webhook_attempts a JOIN webhook_outbox o"
        " USING (outbox_id) WHERE o.subscription_id = :s ORDER BY a.attempt_id",
        s=subscription_id,
    )


def test_webhook_id_is_the_delivery_s_on_every_retry_and_the_timestamp_the_attempt_s(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    (hook,) = only_subscriptions(shop, f"http://127.0.0.1:{port}/std")
    add_changes(shop, 8000500, 1)
    receiver = Receiver()
    receiver.answers = [500]
    patient = WebhookDelivery(backoff_seconds=3600, timeout_seconds=2, allow_private=True)
    with receiver.up(port):
        deliver_due(shop.jm, patient)  # the first attempt, answered 500: retried in an hour
        time.sleep(2.5)
        shop.execute(
            shop.jm,
            "UPDATE webhook_outbox SET next_attempt_at = now() WHERE subscription_id = :s",
            {"s": hook},
        )
        drain(shop)
    first, second = receiver.received
    (row,) = outbox(shop, hook)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["headers"]["webhook-id"] == str(row["delivery_id"])
    assert first["body"] == second["body"], "the same bytes are signed on every attempt"
    # Each attempt is stamped when it is made (not when the change was queued, nor reused from
    # the first attempt): the receiver's replay window is measured from it.
    stamps = [int(r["headers"]["webhook-timestamp"]) for r in receiver.received]
    for stamp, request in zip(stamps, receiver.received, strict=True):
        assert request["at"] - 2 <= stamp <= request["at"], (stamp, request["at"])
    assert stamps[1] - stamps[0] >= 2
    now = time.time()
    for request in receiver.received:
        (signature,) = request["headers"]["webhook-signature"].split(" ")
        assert signature.startswith("v1,")
    # The signature covers id and timestamp: a replay with a changed id or time does not verify.
    forged = dict(second["headers"], **{"webhook-id": "another-delivery"})
    assert not standard_verified([SECRET], forged, second["body"])
    stale = dict(second["headers"], **{"webhook-timestamp": str(int(now) - 3600)})
    assert not standard_verified([SECRET], stale, second["body"])


def test_a_rotated_secret_signs_beside_the_new_one_until_the_overlap_ends(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    (hook,) = only_subscriptions(shop, f"http://127.0.0.1:{port}/rotating")
    old, new = SECRET, new_secret()
    with shop.jm.begin() as conn:
        rotated = outbox_io.rotate_secret(conn, hook, new, overlap_seconds=3600)
    assert rotated is not None and rotated["previous_secret_expires_at"] > rotated[
        "secret_rotated_at"
    ] + timedelta(seconds=3590)
    add_changes(shop, 8000600, 1)
    both = Receiver(secrets=[old, new])
    with both.up(port):
        drain(shop)
    (during,) = both.received
    assert len(during["headers"]["webhook-signature"].split(" ")) == 2
    assert standard_verified([old], during["headers"], during["body"]), "old receivers verify"
    assert standard_verified([new], during["headers"], during["body"]), "switched ones too"
    assert legacy_verified(new, during["headers"], during["body"])
    # The overlap ends: only the new secret signs.
    shop.execute(
        shop.jm,
        "UPDATE webhook_subscriptions SET previous_secret_expires_at = now() - interval '1 s'"
        " WHERE subscription_id = :s",
        {"s": hook},
    )
    add_changes(shop, 8000610, 1)
    switched = Receiver(secrets=[new])
    with switched.up(port):
        drain(shop)
    (after,) = switched.received
    assert len(after["headers"]["webhook-signature"].split(" ")) == 1
    assert not standard_verified([old], after["headers"], after["body"])
    # A second rotation within an overlap ends the oldest secret at once: two sign, at most.
    newest = new_secret()
    with shop.jm.begin() as conn:
        outbox_io.rotate_secret(conn, hook, new_secret(), overlap_seconds=3600)
        outbox_io.rotate_secret(conn, hook, newest, overlap_seconds=3600)
    add_changes(shop, 8000620, 1)
    with shop.jm.begin() as conn:
        outbox_io.enqueue_changes(conn)  # what a delivery run first does
        (due,) = outbox_io.due_deliveries(conn, hook, 10)
    assert due.secrets[0] == newest and len(due.secrets) == 2 and new not in due.secrets


def test_the_default_retry_horizon_is_at_least_a_day() -> None:
    """An MIS down overnight still gets its deliveries: the waits between the attempts of the
    documented defaults (resource and settings alike) add up to more than 24 hours."""
    documented = {name: field.default for name, field in Settings.model_fields.items()}
    configured = WebhookDelivery(
        max_attempts=documented["webhook_max_attempts"],
        backoff_seconds=documented["webhook_backoff_seconds"],
        backoff_max_seconds=documented["webhook_backoff_max_seconds"],
    )
    for delivery in (WebhookDelivery(), configured):
        waits = [delivery.backoff(n) for n in range(1, delivery.max_attempts)]
        assert waits == sorted(waits) and waits[0] == delivery.backoff_seconds
        assert sum(waits) >= 24 * 3600, sum(waits) / 3600
        assert delivery.horizon_seconds() == sum(waits)


def next_attempt_in(shop: Shop, subscription_id: int) -> list[float]:
    return [
        r["s"]
        for r in shop.rows(
            shop.jm,
            "SELECT extract(epoch FROM next_attempt_at - now())::float AS s FROM webhook_outbox"
            " WHERE subscription_id = :s AND state = 'pending' ORDER BY outbox_id",
            s=subscription_id,
        )
    ]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_or_as_a_date_postpones_the_whole_subscription(
    hooked_shop: tuple[Shop, int, int], port: int, status: int
) -> None:
    shop, _, _ = hooked_shop
    (busy,) = only_subscriptions(shop, f"http://127.0.0.1:{port}/busy")
    add_changes(shop, 8000700 + status * 10, 3)
    in_an_hour = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    for retry_after, expected in (("120", 120), (in_an_hour, 3600)):
        receiver = Receiver()
        receiver.answers = [(status, {"Retry-After": retry_after})]
        with receiver.up(port):
            report = deliver_due(shop.jm, FAST)  # a backoff of 1 ms: only Retry-After waits
        assert len(receiver.received) == 1 and report.failed_attempts == 1
        waits = next_attempt_in(shop, busy)
        assert len(waits) == 3
        assert all(expected - 60 < w <= expected + 1 for w in waits), waits
        assert f"HTTP {status}, Retry-After" in attempts_of(shop, busy)[-1]["error"]
        shop.execute(shop.jm, "UPDATE webhook_outbox SET next_attempt_at = now()")
    receiver = Receiver()
    with receiver.up(port):
        drain(shop)
    assert {r["state"] for r in outbox(shop, busy)} == {"delivered"}


def test_410_gone_disables_the_subscription_and_the_listing_says_so(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    gone, other = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/gone", f"http://127.0.0.1:{port}/other"
    )
    add_changes(shop, 8000800, 2)
    receiver = Receiver()
    receiver.answers_for["/gone"] = [410]
    with receiver.up(port):
        report = deliver_due(shop.jm, FAST)
        assert [r["path"] for r in receiver.received if r["status"] == 410] == ["/gone"]
        assert len(report.disabled) == 1 and "/gone" in report.disabled[0]
        # Changes that land afterwards are not owed to it at all (0017's enqueue trigger).
        add_changes(shop, 8000810, 2)
        drain(shop)
    assert [r["path"] for r in receiver.received].count("/gone") == 1
    assert {r["state"] for r in outbox(shop, other)} == {"delivered"}
    gave_up = outbox(shop, gone)
    assert len(gave_up) == 2 and {r["state"] for r in gave_up} == {"failed"}
    assert all("410 Gone" in r["last_error"] for r in gave_up)
    with shop.jm.connect() as conn:
        listed = {
            s["id"]: WebhookState.model_validate(s) for s in outbox_io.list_subscriptions(conn)
        }
    assert listed[gone].disabled_at is not None
    assert "410 Gone" in (listed[gone].disabled_reason or "")
    assert listed[gone].pending == 0 and listed[gone].failed == 2
    assert listed[other].disabled_at is None and listed[other].delivered == 4


# ----- targets ----------------------------------------------------------------------------
def test_a_private_target_is_refused_at_delivery_time_and_nothing_is_sent(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    """DNS may change after a subscription was accepted: the address is checked again when
    connecting, and the refusal is a failed attempt (recorded), not a POST."""
    shop, _, _ = hooked_shop
    loopback, named = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/direct", f"http://localhost:{port}/named"
    )
    add_changes(shop, 8000900, 1)
    receiver = Receiver()
    with receiver.up(port):
        report = deliver_due(shop.jm, WebhookDelivery(backoff_seconds=3600, timeout_seconds=2))
    assert receiver.received == []
    assert report.delivered == 0 and report.failed_attempts == 2
    for subscription_id in (loopback, named):
        (attempt,) = attempts_of(shop, subscription_id)
        assert attempt["status_code"] is None
        assert "refused target" in attempt["error"] and "loopback" in attempt["error"]


def test_credentials_in_a_url_are_sent_as_basic_auth_and_never_shown(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    password = "pa55-w0rd-xyz"
    down_port = free_port()
    good, down = only_subscriptions(
        shop,
        f"http://mis:{password}@127.0.0.1:{port}/auth",
        f"http://mis:{password}@127.0.0.1:{down_port}/auth",
    )
    add_changes(shop, 8001000, 1)
    receiver = Receiver()
    warnings: list[str] = []

    class Log:
        def warning(self, message: str) -> None:
            warnings.append(message)

    with receiver.up(port):
        report = deliver_due(
            shop.jm, WebhookDelivery(timeout_seconds=2, allow_private=True), log=Log()
        )  # type: ignore[arg-type]
    (request,) = receiver.received
    assert request["headers"]["Authorization"] == "Basic bWlzOnBhNTUtdzByZC14eXo="
    assert report.failed_attempts == 1 and warnings
    assert all(password not in w and "***@127.0.0.1" in w for w in warnings)
    with shop.jm.connect() as conn:
        listed = [
            WebhookState.model_validate(s).model_dump(mode="json")
            for s in outbox_io.list_subscriptions(conn)
        ]
    shown = json.dumps([attempts_of(shop, down), outbox(shop, down), listed], default=str)
    assert password not in shown
    assert f"http://***@127.0.0.1:{port}/auth" in shown


# ----- deliveries no receiver can hold up or blow up ---------------------------------------
class Trickler(Receiver):
    """Answers one byte every 0.1 s: a whole answer would take about 20 s."""

    def respond(self, handler: BaseHTTPRequestHandler, status: int, headers: dict) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 150\r\n\r\n" + b"x" * 150
        with suppress(OSError):  # the deliverer hangs up: what we expect
            for byte in answer:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.1)
        handler.close_connection = True


class Huge(Receiver):
    """Answers 200 with a 1 GiB body, written as fast as the connection takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.done = threading.Event()

    def respond(self, handler: BaseHTTPRequestHandler, status: int, headers: dict) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(2**30))
        handler.end_headers()
        chunk = b"x" * 65536
        try:
            while self.written < 2**30:
                handler.wfile.write(chunk)
                self.written += len(chunk)
        except OSError:
            pass
        finally:
            handler.close_connection = True
            self.done.set()


class Holder(Receiver):
    """Answers the first ``answered`` POSTs, takes the next, then answers only once released
    (or after 60 s)."""

    def __init__(self, answered: int = 0) -> None:
        super().__init__()
        self.answered = answered
        self.holding = threading.Event()
        self.release = threading.Event()

    def respond(self, handler: BaseHTTPRequestHandler, status: int, headers: dict) -> None:
        if len(self.received) > self.answered:
            self.holding.set()
            self.release.wait(60)
        with suppress(OSError):
            super().respond(handler, status, headers)


def test_a_trickling_receiver_is_cut_at_the_attempt_s_deadline(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    """httpx's timeout is per read: one byte every 0.1 s never trips it. The attempt's
    deadline is wall-clock, for the whole attempt."""
    shop, _, _ = hooked_shop
    (trickled,) = only_subscriptions(shop, f"http://127.0.0.1:{port}/trickle")
    add_changes(shop, 8001100, 1)
    receiver = Trickler()
    settings = WebhookDelivery(timeout_seconds=1, backoff_seconds=3600, allow_private=True)
    with receiver.up(port):
        report = deliver_due(shop.jm, settings)
    assert report.failed_attempts == 1 and report.delivered == 0
    (attempt,) = attempts_of(shop, trickled)
    assert attempt["status_code"] is None
    assert "Timeout" in attempt["error"] or "deadline" in attempt["error"], attempt["error"]
    # Generous: the whole answer would take 20 s.
    assert attempt["duration_ms"] < 8000, attempt["duration_ms"]


def test_a_huge_answer_is_not_read(hooked_shop: tuple[Shop, int, int], port: int) -> None:
    shop, _, _ = hooked_shop
    (huge,) = only_subscriptions(shop, f"http://127.0.0.1:{port}/huge")
    add_changes(shop, 8001200, 1)
    receiver = Huge()
    with receiver.up(port):
        report = deliver_due(shop.jm, FAST)
        assert receiver.done.wait(60), "the receiver is still writing: someone reads it all"
    assert report.delivered == 1 and {r["state"] for r in outbox(shop, huge)} == {"delivered"}
    # What the kernel's buffers took before the deliverer hung up, not the gigabyte.
    assert receiver.written < 64 * 2**20, receiver.written


def test_a_held_or_down_receiver_costs_the_others_nothing_and_counts_are_current(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    """While one receiver holds its attempt and another is down, the good one gets every
    delivery, each recorded as it is made (what GET /api/webhooks counts)."""
    shop, _, _ = hooked_shop
    held_port, down_port = free_port(), free_port()
    held, down, good = only_subscriptions(
        shop,
        f"http://127.0.0.1:{held_port}/held",
        f"http://127.0.0.1:{down_port}/down",
        f"http://127.0.0.1:{port}/good",
    )
    jobs = 12
    add_changes(shop, 8001300, jobs)
    holder, receiver = Holder(), Receiver()
    settings = WebhookDelivery(timeout_seconds=60, backoff_seconds=3600, allow_private=True)
    with holder.up(held_port), receiver.up(port):
        reports: list = []
        run = threading.Thread(target=lambda: reports.append(deliver_due(shop.jm, settings)))
        run.start()
        try:
            assert holder.holding.wait(30)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with shop.jm.connect() as conn:
                    counts = {s["id"]: s for s in outbox_io.list_subscriptions(conn)}
                if counts[good]["delivered"] == jobs:
                    break
                time.sleep(0.1)
            assert counts[good]["delivered"] == jobs, "the good receiver got everything"
            assert counts[down]["failed"] == 0 and counts[down]["pending"] == jobs
            # Nothing is given up yet, but the listing shows the down receiver failing.
            assert counts[down]["last_attempt_status"] is None
            assert "ConnectError" in counts[down]["last_attempt_error"]
            assert counts[good]["last_attempt_status"] == 200
            assert counts[good]["last_attempt_error"] is None
            assert counts[held]["last_attempt_at"] is None, "its first attempt is still held"
            assert len(attempts_of(shop, down)) == 1, "the down one failed once, then rests"
            assert run.is_alive() and attempts_of(shop, held) == [], "still held, meanwhile"
        finally:
            holder.release.set()
            run.join(120)
    assert not run.is_alive()
    # Released, the held receiver answers, and gets the rest in the same run.
    assert reports[0].delivered == 2 * jobs
    assert len(receiver.accepted()) == jobs
    assert [r["status_code"] for r in attempts_of(shop, held)] == [200] * jobs


def test_the_run_s_deadline_holds_inside_an_attempt(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    shop, _, _ = hooked_shop
    held_port = free_port()
    (held,) = only_subscriptions(shop, f"http://127.0.0.1:{held_port}/held")
    add_changes(shop, 8001400, 1)
    holder = Holder()
    settings = WebhookDelivery(
        timeout_seconds=600, run_seconds=1, backoff_seconds=3600, allow_private=True
    )
    with holder.up(held_port):
        try:
            started = time.monotonic()
            report = deliver_due(shop.jm, settings)
            took = time.monotonic() - started
        finally:
            holder.release.set()
    assert holder.holding.is_set() and report.failed_attempts == 1
    assert took < 30, took  # generous: the attempt's own timeout is 600 s
    (attempt,) = attempts_of(shop, held)
    assert attempt["status_code"] is None
    assert "Timeout" in attempt["error"] or "deadline" in attempt["error"], attempt["error"]


def test_a_tls_handshake_trickled_a_byte_at_a_time_is_cut_at_the_deadline(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    """A handshake is many reads in one operation: it too ends at the attempt's deadline."""
    shop, _, _ = hooked_shop
    listener = socket.create_server(("127.0.0.1", 0))
    tls_port = listener.getsockname()[1]
    (trickled,) = only_subscriptions(shop, f"https://127.0.0.1:{tls_port}/tls")
    add_changes(shop, 8001500, 1)
    stop = threading.Event()

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn, suppress(OSError):
            # A TLS handshake record announcing 16 KiB, then one byte every 0.1 s (~30 min).
            conn.sendall(b"\x16\x03\x03\x40\x00")
            while not stop.wait(0.1):
                conn.sendall(b"\x00")

    server = threading.Thread(target=serve_one, daemon=True)
    server.start()
    settings = WebhookDelivery(timeout_seconds=1, backoff_seconds=3600, allow_private=True)
    try:
        report = deliver_due(shop.jm, settings)
    finally:
        stop.set()
        listener.close()
    assert report.failed_attempts == 1
    (attempt,) = attempts_of(shop, trickled)
    assert "timed out" in attempt["error"] or "deadline" in attempt["error"], attempt["error"]
    assert attempt["duration_ms"] < 8000, attempt["duration_ms"]


def test_each_attempt_is_recorded_as_it_ends_not_when_the_subscription_s_turn_ends(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    shop, _, _ = hooked_shop
    held_port = free_port()
    (held,) = only_subscriptions(shop, f"http://127.0.0.1:{held_port}/held")
    add_changes(shop, 8001600, 5)
    holder = Holder(answered=3)
    settings = WebhookDelivery(timeout_seconds=60, backoff_seconds=3600, allow_private=True)
    with holder.up(held_port):
        run = threading.Thread(target=deliver_due, args=(shop.jm, settings))
        run.start()
        try:
            assert holder.holding.wait(30), "the fourth delivery is being held"
            with shop.jm.connect() as conn:
                (listed,) = outbox_io.list_subscriptions(conn)
            assert (listed["id"], listed["delivered"], listed["pending"]) == (held, 3, 2)
        finally:
            holder.release.set()
            run.join(120)
    assert {r["state"] for r in outbox(shop, held)} == {"delivered"}


def test_the_deliverer_takes_its_settings_and_refuses_private_targets_by_default() -> None:
    for allow in (False, True):
        settings = Settings(webhook_allow_private=allow, webhook_timeout_seconds=3)
        defs = definitions_from_settings(settings, "postgresql://jm", "postgresql://logs")
        webhooks = defs.resources["webhooks"]
        assert (webhooks.allow_private, webhooks.timeout_seconds) == (allow, 3)
    assert WebhookDelivery().allow_private is False
    assert Settings.model_fields["webhook_allow_private"].default is False


def test_when_the_run_fails_the_other_workers_stop_after_their_attempt(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    """A worker that cannot record (the database refuses) fails the run; the others do not go
    on delivering for the rest of the run's time, unrecorded."""
    shop, _, _ = hooked_shop
    held_port = free_port()
    broken, held = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/broken", f"http://127.0.0.1:{held_port}/held"
    )
    add_changes(shop, 8001700, 4)
    shop.execute(
        shop.jm,
        "CREATE FUNCTION test_refuse_attempts() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF (SELECT subscription_id FROM webhook_outbox WHERE outbox_id = NEW.outbox_id)"
        f" = {broken} THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER refuse_attempts BEFORE INSERT ON webhook_attempts"
        " FOR EACH ROW EXECUTE FUNCTION test_refuse_attempts()",
    )
    holder, receiver = Holder(), Receiver()
    settings = WebhookDelivery(timeout_seconds=60, backoff_seconds=3600, allow_private=True)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            deliver_due(shop.jm, settings)
        except Exception as error:  # noqa: BLE001 - what the test looks at
            failures.append(error)

    try:
        with holder.up(held_port), receiver.up(port):
            delivering = threading.Thread(target=run)
            delivering.start()
            assert holder.holding.wait(30)
            deadline = time.monotonic() + 30
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(3)  # generous: the broken worker fails and the run sets its stop
            holder.release.set()
            delivering.join(120)
    finally:
        shop.execute(
            shop.jm,
            "DROP TRIGGER refuse_attempts ON webhook_attempts; DROP FUNCTION test_refuse_attempts()",
        )
    assert not delivering.is_alive()
    assert failures and "refused by the test" in str(failures[0])
    assert len(holder.received) == 1, "the held subscription's worker stopped after its attempt"
    assert len(attempts_of(shop, held)) == 1


def test_a_4xx_holds_back_that_delivery_alone_an_unavailable_receiver_all_of_them(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    shop, _, _ = hooked_shop
    refusing, failing = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/refusing", f"http://127.0.0.1:{port}/failing"
    )
    add_changes(shop, 8001800, 3)
    receiver = Receiver()
    receiver.answers_for = {"/refusing": [400], "/failing": [500]}
    settings = WebhookDelivery(backoff_seconds=600, timeout_seconds=2, allow_private=True)
    with receiver.up(port):
        deliver_due(shop.jm, settings)
    # The receiver is up and said no to one delivery: the others go on.
    assert [r["state"] for r in outbox(shop, refusing)] == ["pending", "delivered", "delivered"]
    assert len(next_attempt_in(shop, refusing)) == 1
    # A 5xx: the receiver is taken as unavailable; all its deliveries wait the backoff.
    assert [r["status"] for r in receiver.received if r["path"] == "/failing"] == [500]
    waits = next_attempt_in(shop, failing)
    assert len(waits) == 3 and all(500 < w <= 601 for w in waits), waits


def test_a_retry_after_that_is_no_number_fails_its_own_attempt_only(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    """From the adversarial review: '²' (b"\\xb2" read as latin-1) is a digit to str.isdigit
    but not to float(); it ended the whole run, every subscriber's deliveries with it."""
    shop, _, _ = hooked_shop
    hostile, good = only_subscriptions(
        shop, f"http://127.0.0.1:{port}/hostile", f"http://127.0.0.1:{port}/good"
    )
    add_changes(shop, 9100000, 2)
    receiver = Receiver()
    receiver.answers_for["/hostile"] = [(503, {"Retry-After": "\u00b2"})] * 5
    with receiver.up(port):
        report = deliver_due(shop.jm, FAST)
    assert report.failed_attempts >= 1
    assert {r["state"] for r in outbox(shop, good)} == {"delivered"}
    assert "HTTP 503" in attempts_of(shop, hostile)[0]["error"]


# Below: tests that replace the hooked shop's subscriptions (only_subscriptions).


def test_the_writer_queues_nothing_the_deliverer_queues_each_change_in_order(
    hooked_shop: tuple[Shop, int, int], instance: dg.DagsterInstance, port: int
) -> None:
    """Issue 19: a write costs nothing per subscription (0020). What it commits is owed all the
    same: the next delivery run queues every change past the subscription's position, in
    change order, and delivers it; then nothing is due."""
    shop, _, _ = hooked_shop
    (hook,) = only_subscriptions(shop, f"http://127.0.0.1:{port}/after-0020")
    last = shop.scalar(shop.jm, "SELECT max(change_id) FROM job_status_changes")
    shop.add_job("7009_9")
    shop.add_job_operation("7009_9", "1")
    shop.map_files("W-I1", ["FILE_1_Labex_7009_9_1", "FILE_1_Labex_7009_9_2"])
    shop.map_files("W-I2", ["FILE_1_Labex_7009_9_2"])
    shop.print_event("W-I1", "ABORTED")
    shop.print_event("W-I2", "PRINTED")
    shop.process(instance, "print_os")
    changes = shop.rows(
        shop.jm,
        "SELECT change_id, job_id, status FROM job_status_changes WHERE change_id > :last"
        " ORDER BY change_id",
        last=last,
    )
    assert changes  # the write published changes ...
    queued = shop.scalar(
        shop.jm, "SELECT count(*) FROM webhook_outbox WHERE subscription_id = :s", s=hook
    )
    assert queued == 0  # ... and queued nothing itself
    with shop.jm.connect() as conn:
        assert outbox_io.work_due(conn)  # the sensor sees the subscription behind the stream
    receiver = Receiver()
    with receiver.up(port):
        deliver_due(shop.jm, FAST)
    got = [json.loads(r["body"]) for r in receiver.received]
    assert [g["update_id"] for g in got] == [c["change_id"] for c in changes]
    with shop.jm.connect() as conn:
        assert not outbox_io.work_due(conn)


def test_concurrent_batched_queuing_owes_each_change_once_per_subscription(
    hooked_shop: tuple[Shop, int, int], port: int
) -> None:
    """Callers racing (a delivery run and a by-hand one), in batches smaller than the backlog:
    each change is queued once for each subscription owed it, in change order; a filtered
    subscription's position moves past what it is not owed; a disabled one is owed nothing."""
    shop, _, _ = hooked_shop
    everything, coating, gone = only_subscriptions(
        shop, *(f"http://127.0.0.1:{port}/{name}" for name in ("all", "coating", "gone"))
    )
    shop.execute(
        shop.jm,
        "UPDATE webhook_subscriptions SET operations = ARRAY['coating'] WHERE subscription_id = :s",
        {"s": coating},
    )
    shop.execute(
        shop.jm,
        "UPDATE webhook_subscriptions SET disabled_at = now(), disabled_reason = '410'"
        " WHERE subscription_id = :s",
        {"s": gone},
    )
    with shop.jm.begin() as conn:
        ids = [
            add_change(
                conn, f"{7200 + i}_1", "coating" if i % 3 else "print", source_id=8002000 + i
            )
            for i in range(40)
        ]
    start = threading.Barrier(4)

    def queue_some(_: int) -> int:
        start.wait()
        with shop.jm.begin() as conn:
            return outbox_io.enqueue_changes(conn, batch=3)

    with ThreadPoolExecutor(max_workers=4) as pool:
        queued = sum(pool.map(queue_some, range(4)))
    owed_coating = [i for n, i in enumerate(ids) if n % 3]
    assert queued == len(ids) + len(owed_coating)
    for subscription_id, owed in ((everything, ids), (coating, owed_coating), (gone, [])):
        got = shop.rows(
            shop.jm,
            "SELECT change_id FROM webhook_outbox WHERE subscription_id = :s ORDER BY outbox_id",
            s=subscription_id,
        )
        assert [r["change_id"] for r in got] == owed
    positions = shop.rows(
        shop.jm,
        "SELECT subscription_id, enqueued_up_to FROM webhook_subscriptions"
        " WHERE subscription_id IN (:a, :c)",
        a=everything,
        c=coating,
    )
    assert {r["enqueued_up_to"] for r in positions} == {ids[-1]}


def test_nothing_is_due_while_the_only_pending_rows_wait_behind_a_backing_off_head(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    """Only the head of a (subscription, job) queue may go: a row queued behind a head still in
    its backoff is not due, so the webhook sensor starts no delivery run for it (one that
    would do nothing, every 10 s, for as long as the backoff lasts)."""
    shop, _, _ = hooked_shop
    (hook,) = only_subscriptions(shop, "https://receiver.example/h")
    for n, attempts, wait in ((1, 5, "1 hour"), (2, 0, "0 seconds")):
        shop.execute(
            shop.jm,
            "INSERT INTO webhook_outbox (delivery_id, subscription_id, update_id, job_id, event,"
            " payload, attempts, next_attempt_at) VALUES (gen_random_uuid(), :s, :n, 'J1',"
            " 'status', '{}'::jsonb, :a, now() + CAST(:w AS interval))",
            {"s": hook, "n": n, "a": attempts, "w": wait},
        )
    with shop.jm.connect() as conn:
        assert outbox_io.subscriptions_due(conn) == []  # the head waits its backoff
        assert not outbox_io.work_due(conn)
    shop.execute(
        shop.jm,
        "UPDATE webhook_outbox SET next_attempt_at = now() WHERE update_id = 1"
        " AND subscription_id = :s",
        {"s": hook},
    )
    with shop.jm.connect() as conn:
        assert outbox_io.work_due(conn)  # the head's backoff over: due


def test_pending_counts_the_changes_the_deliverer_has_not_queued_yet(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    """GET /api/webhooks' `pending` is what the subscription is still owed (R25): since 0020 the
    changes past its position are owed before the deliverer copies them into the outbox, so a
    count of outbox rows alone said 0 while changes waited. Queuing them changes nothing; a
    disabled subscription is owed nothing."""
    shop, _, _ = hooked_shop
    everything, coating, gone = only_subscriptions(
        shop, "https://a.example/h", "https://c.example/h", "https://g.example/h"
    )
    shop.execute(
        shop.jm,
        "UPDATE webhook_subscriptions SET operations = ARRAY['coating'] WHERE subscription_id = :c",
        {"c": coating},
    )
    with shop.jm.begin() as conn:
        for i in range(3):
            add_change(conn, f"{7300 + i}_1", "coating", source_id=8003000 + i)
        for i in range(2):
            add_change(conn, f"{7300 + i}_1", "kiss_cut", source_id=8003100 + i)
        outbox_io.disable_subscription(conn, gone, "410 Gone")

    def pending() -> dict[int, int]:
        with shop.jm.connect() as conn:
            return {s["id"]: s["pending"] for s in outbox_io.list_subscriptions(conn)}

    assert pending() == {everything: 5, coating: 3, gone: 0}
    with shop.jm.begin() as conn:
        outbox_io.enqueue_changes(conn)
    assert shop.scalar(shop.jm, "SELECT count(*) FROM webhook_outbox WHERE state = 'pending'") == 8
    assert pending() == {everything: 5, coating: 3, gone: 0}


def test_a_delete_and_an_attempt_s_record_in_the_same_instant_do_not_deadlock(
    hooked_shop: tuple[Shop, int, int],
) -> None:
    """DELETE /api/webhooks/{id} holds the subscription row and then gives up its pending
    deliveries; an attempt recorded in between must not hold one of them while it waits for the
    subscription row (PostgreSQL would abort one of the two as a deadlock). The record is
    started exactly between the delete's two statements and must wait for it, then find its
    delivery given up; the attempt itself, made all the same, is kept."""
    shop, _, _ = hooked_shop
    (hook,) = only_subscriptions(shop, "https://receiver.example/deleted")
    add_changes(shop, 8003200, 2)
    with shop.jm.begin() as conn:
        outbox_io.enqueue_changes(conn)
    first = shop.scalar(
        shop.jm, "SELECT min(outbox_id) FROM webhook_outbox WHERE subscription_id = :s", s=hook
    )
    outcome = outbox_io.Outcome(first, ok=True, status_code=204, error=None, duration_ms=3)
    errors: list[BaseException] = []

    def record() -> None:
        try:
            with shop.jm.begin() as conn:
                outbox_io.record_outcome(conn, outcome, max_attempts=5, run_id=None)
        except BaseException as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    recorder = threading.Thread(target=record)

    def record_between(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001, ARG001
        if "UPDATE webhook_outbox" in statement and not recorder.is_alive():
            recorder.start()
            for _ in range(200):  # until the record waits for a lock
                waiting = shop.scalar(
                    shop.jm,
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%webhook_subscriptions%'",
                )
                if waiting:
                    return
                time.sleep(0.05)
            raise AssertionError("the record never waited for the delete")

    with shop.jm.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", record_between)
        with conn.begin():
            assert outbox_io.delete_subscription(conn, hook)
    recorder.join(30)
    assert not recorder.is_alive() and errors == []
    states = {r["outbox_id"]: (r["state"], r["last_error"]) for r in outbox(shop, hook)}
    assert set(states.values()) == {("failed", "subscription deleted")}, states
    kept = shop.rows(
        shop.jm, "SELECT attempt, status_code FROM webhook_attempts WHERE outbox_id = :o", o=first
    )
    assert [(r["attempt"], r["status_code"]) for r in kept] == [(1, 204)]
