"""Webhook deliveries as Dagster work: a sensor starts a run when deliveries are due; the run
POSTs them, signed (Standard Webhooks), records every attempt as it happens, and retries failures
with backoff until the limit.

At least once: the outbox row leaves 'pending' only after a 2xx answer was recorded, so a crash
between the POST and the record sends it again, with the same ``webhook-id`` for the receiver to
de-duplicate on. A job's changes go in order: only the oldest pending delivery of each
(subscription, job) is due, so a receiver that was down gets everything afterwards, in order per
job. Subscribers are isolated: each is delivered by its own worker (a bounded pool), one attempt
at a time and in order, so a slow or down receiver costs the others nothing but a worker; every
attempt ends by its own deadline and by the run's.
"""

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.core.webhooks import (
    legacy_signature,
    redact_url,
    retry_after_seconds,
    scrub,
    signature_header,
)
from jobstatus_dagster.io import outbox
from jobstatus_dagster.io.webhook_http import MAX_ANSWER_BYTES, DeliveryClient
from jobstatus_dagster.pipeline.resources import PostgresDatabase
from jobstatus_dagster.pipeline.windows import IN_FLIGHT

JOB_NAME = "deliver_webhooks"
# Standard Webhooks (standardwebhooks.com).
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
# Ours, kept for receivers written before Standard Webhooks.
SIGNATURE_HEADER = "X-Jobstatus-Signature"
DELIVERY_HEADER = "X-Jobstatus-Delivery"
UPDATE_ID_HEADER = "X-Jobstatus-Update-Id"
# One deliverer at a time (a session lock, so a second run finds it taken and stops).
DELIVERER_LOCK = 7_316_052_210
BATCH = 100  # due deliveries of one subscription read at a time
POLL_SECONDS = 0.5  # how often the run looks for subscriptions that became due meanwhile
IDLE_SECONDS = 5.0  # a run with nothing in flight waits this long at most for a backoff to pass


class WebhookDelivery(dg.ConfigurableResource):
    """How deliveries are attempted and when they are given up. With the defaults a delivery is
    retried for about 29 hours (2 s doubling to 1 h, 40 attempts) before it is given up."""

    max_attempts: int = 40
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 3600.0
    timeout_seconds: float = 10.0  # one attempt, all of it: connect, send, answer
    run_seconds: float = 240.0  # one run delivers for at most this long, then the next tick
    concurrency: int = 8  # subscriptions delivered at once, each by its own worker
    allow_private: bool = False  # true: loopback, private and link-local targets are called
    max_answer_bytes: int = MAX_ANSWER_BYTES  # of any answer, at most this much is read
    retry_after_max_seconds: float = 86_400.0  # a longer Retry-After is cut to this

    def backoff(self, failed_attempts: int) -> float:
        """The wait after a delivery's ``failed_attempts``-th failure: doubling, capped."""
        return min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (failed_attempts - 1))

    def horizon_seconds(self) -> float:
        """How long a delivery is retried before it is given up (the waits between attempts)."""
        return sum(self.backoff(n) for n in range(1, self.max_attempts))


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed_attempts: int = 0
    given_up: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pending: int = 0
    skipped: bool = False  # another deliverer holds the lock
    # Set by a subscription's worker when an attempt failed: the subscription is not called
    # again before this time (time.monotonic), its failed delivery's backoff or Retry-After.
    rest_until: float | None = None

    def add(self, other: "DeliveryReport") -> None:
        self.delivered += other.delivered
        self.failed_attempts += other.failed_attempts
        self.given_up += other.given_up
        self.disabled += other.disabled
        self.warnings += other.warnings

    def as_metadata(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "given_up": len(self.given_up),
            "disabled_subscriptions": len(self.disabled),
            "pending": self.pending,
        }


def signed_headers(due: outbox.Due, timestamp: int) -> dict[str, str]:
    """The headers of one attempt: Standard Webhooks' (the id is the delivery's, the same on
    every retry; the timestamp is the attempt's) and ours."""
    return {
        "Content-Type": "application/json",
        ID_HEADER: due.delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: signature_header(
            due.secrets, due.delivery_id, timestamp, due.body
        ),
        SIGNATURE_HEADER: legacy_signature(due.secrets[0], due.body),
        DELIVERY_HEADER: due.delivery_id,
        UPDATE_ID_HEADER: str(due.update_id),
        "User-Agent": "jobstatus-webhooks",
    }


def _attempt(
    client: DeliveryClient, due: outbox.Due, deadline: float, settings: WebhookDelivery
) -> outbox.Outcome:
    headers = signed_headers(due, int(time.time()))
    started = time.monotonic()
    try:
        answer = client.post(due.url, due.body, headers, deadline)
    except Exception as error:  # noqa: BLE001 - whatever one attempt raises is its failure
        # Not only connection errors: an unusable stored URL raises httpx.InvalidURL, and a
        # refused target TargetRefused; none may end the run and stop the other subscribers.
        elapsed = int((time.monotonic() - started) * 1000)
        reason = scrub(f"{type(error).__name__}: {error}", due.url)[:500]
        wait = settings.backoff(due.attempts + 1)
        return outbox.Outcome(due.outbox_id, False, None, reason, elapsed, wait)
    elapsed = int((time.monotonic() - started) * 1000)
    status = answer.status_code
    if 200 <= status < 300:
        return outbox.Outcome(due.outbox_id, True, status, None, elapsed)
    wait = settings.backoff(due.attempts + 1)
    error = f"HTTP {status}"
    if status in (429, 503):
        try:  # the receiver wrote the header: whatever it holds fails this attempt only
            asked = retry_after_seconds(answer.headers.get("retry-after"), datetime.now(UTC))
        except Exception:  # noqa: BLE001
            asked = None
        if asked is not None:
            asked = min(asked, settings.retry_after_max_seconds)
            error += f", Retry-After {asked:g} s"
            wait = max(wait, asked)
    elif status == 410:
        error += " Gone"
    return outbox.Outcome(due.outbox_id, False, status, error, elapsed, wait)


def unavailable(outcome: outbox.Outcome) -> bool:
    """The receiver, not this delivery, failed: no answer, a 5xx, or 429. Its other deliveries
    wait too (a 4xx is about this delivery alone: the receiver is up and said no to it)."""
    return not outcome.ok and (
        outcome.status_code is None or outcome.status_code >= 500 or outcome.status_code == 429
    )


def _record(
    jobmanager: sa.Engine,
    settings: WebhookDelivery,
    due: outbox.Due,
    outcome: outbox.Outcome,
    run_id: str | None,
) -> None:
    """One attempt's outcome, committed at once (GET /api/webhooks counts are current), with
    what it means for the whole subscription: a receiver that is unavailable is not called
    before this delivery's backoff (or its Retry-After) ends, for any delivery, so a receiver
    down overnight is probed once per backoff and its deliveries are not used up meanwhile; a
    410 ends the subscription."""
    with jobmanager.begin() as conn:
        # At least once already: a record lost in a crash means one more POST of the same
        # webhook-id, which receivers de-duplicate. So the commit need not wait for the disk.
        conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
        outbox.record_outcome(conn, outcome, max_attempts=settings.max_attempts, run_id=run_id)
        if unavailable(outcome):
            outbox.postpone_subscription(conn, due.subscription_id, outcome.retry_in)
        if outcome.status_code == 410:
            outbox.disable_subscription(
                conn,
                due.subscription_id,
                f"the receiver answered 410 Gone to delivery {due.delivery_id}",
            )


def _deliver_subscription(
    jobmanager: sa.Engine,
    settings: WebhookDelivery,
    subscription_id: int,
    run_deadline: float,
    run_id: str | None,
    stop: threading.Event,
) -> DeliveryReport:
    """One subscription's due deliveries, in order, one at a time, until none is due, the
    receiver is unavailable or gone (the subscription then rests), the run's time is up, or
    the run stops (another worker failed)."""
    report = DeliveryReport()
    with DeliveryClient(settings.allow_private, settings.max_answer_bytes) as client:
        while time.monotonic() < run_deadline and not stop.is_set():
            with jobmanager.connect() as conn:
                batch = outbox.due_deliveries(conn, subscription_id, BATCH)
            if not batch:
                return report
            for due in batch:
                now = time.monotonic()
                if now >= run_deadline or stop.is_set():
                    return report
                # The run's deadline holds inside an attempt, not only between attempts.
                deadline = min(now + settings.timeout_seconds, run_deadline)
                outcome = _attempt(client, due, deadline, settings)
                _record(jobmanager, settings, due, outcome, run_id)
                if outcome.ok:
                    report.delivered += 1
                    continue
                report.failed_attempts += 1
                url = redact_url(due.url)
                report.warnings.append(
                    f"delivery {due.delivery_id} (update {due.update_id}) to {url}:"
                    f" attempt {due.attempts + 1} failed: {outcome.error}"
                )
                if outcome.status_code == 410:
                    report.disabled.append(f"subscription {subscription_id} ({url})")
                    report.rest_until = float("inf")
                    return report
                if due.attempts + 1 >= settings.max_attempts:
                    report.given_up.append(f"{due.delivery_id} to {url}")
                if unavailable(outcome):
                    report.rest_until = time.monotonic() + outcome.retry_in
                    return report
    return report


def deliver_due(
    jobmanager: sa.Engine,
    settings: WebhookDelivery,
    run_id: str | None = None,
    log: dg.DagsterLogManager | None = None,
) -> DeliveryReport:
    """Deliver what is due, every subscription in its own worker, until nothing is due or the
    run's time is up. A subscription whose receiver is unavailable rests for the failed
    delivery's backoff (or its Retry-After), so it is not called once per pending job."""
    report = DeliveryReport()
    run_deadline = time.monotonic() + settings.run_seconds
    with jobmanager.connect() as lock_conn:
        if not lock_conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": DELIVERER_LOCK}
        ).scalar_one():
            report.skipped = True
            return report
        try:
            with jobmanager.begin() as conn:
                outbox.give_up_disabled(conn)
            stop = threading.Event()  # set when the run fails: workers end after their attempt
            with ThreadPoolExecutor(settings.concurrency, "webhook-delivery") as pool:
                try:
                    _supervise(jobmanager, settings, run_deadline, run_id, pool, stop, report, log)
                except BaseException:
                    stop.set()
                    raise
        finally:
            lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": DELIVERER_LOCK})
            lock_conn.commit()
    with jobmanager.connect() as conn:
        report.pending = outbox.outbox_summary(conn).get("pending", 0)
    return report


def _supervise(
    jobmanager: sa.Engine,
    settings: WebhookDelivery,
    run_deadline: float,
    run_id: str | None,
    pool: ThreadPoolExecutor,
    stop: threading.Event,
    report: DeliveryReport,
    log: dg.DagsterLogManager | None,
) -> None:
    """Start a worker for each subscription with something due (none twice at once, none
    resting), collect what they report, until nothing is due or in flight."""
    resting: dict[int, float] = {}  # subscription → time.monotonic() it may go again
    working: dict[Future[DeliveryReport], int] = {}
    while True:
        due: list[int] = []
        if time.monotonic() < run_deadline:
            # Changes committed since the last look join the queues first (R25's stream).
            outbox.enqueue_committing(jobmanager)
            with jobmanager.connect() as conn:
                due = outbox.subscriptions_due(conn)
            now = time.monotonic()
            busy = set(working.values())
            for subscription_id in due:
                if subscription_id not in busy and resting.get(subscription_id, 0) <= now:
                    future = pool.submit(
                        _deliver_subscription,
                        jobmanager,
                        settings,
                        subscription_id,
                        run_deadline,
                        run_id,
                        stop,
                    )
                    working[future] = subscription_id
        if not working:
            # Nothing in flight: done, unless a resting subscription may go again soon (a
            # longer rest is the next run's: the sensor starts it).
            wake = min((t for s, t in resting.items() if s in due), default=float("inf"))
            if wake >= min(run_deadline, time.monotonic() + IDLE_SECONDS):
                return
            time.sleep(max(0.0, min(wake - time.monotonic(), POLL_SECONDS)))
            continue
        finished, _ = wait(working, POLL_SECONDS, FIRST_COMPLETED)
        for future in finished:
            subscription_id = working.pop(future)
            part = future.result()
            report.add(part)
            if part.rest_until is not None:
                resting[subscription_id] = part.rest_until
            if log is not None:
                for warning in part.warnings:
                    log.warning(warning)


@dg.op(name="deliver_due_webhooks", tags={"kind": "webhooks"})
def deliver_webhooks_op(
    context: dg.OpExecutionContext, jobmanager: PostgresDatabase, webhooks: WebhookDelivery
) -> None:
    """POST the due status changes to their subscribers; the run fails when one was given up,
    so the data team sees it."""
    report = deliver_due(jobmanager.engine, webhooks, context.run.run_id, context.log)
    context.add_output_metadata(report.as_metadata())
    if report.given_up:
        raise dg.Failure(
            f"{len(report.given_up)} deliveries given up after {webhooks.max_attempts}"
            f" attempts: {', '.join(report.given_up[:5])}",
            metadata=report.as_metadata(),
            allow_retries=False,
        )


@dg.job(name=JOB_NAME, description="Deliver due webhook POSTs; retries and give-ups recorded.")
def deliver_webhooks_job() -> None:
    deliver_webhooks_op()


def build_webhook_sensor(interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="webhook_sensor",
        job=deliver_webhooks_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Starts a delivery run when webhook deliveries are due (or status changes are not"
            " yet queued for a subscriber) and none is running."
        ),
    )
    def webhook_sensor(context: dg.SensorEvaluationContext, jobmanager: PostgresDatabase):
        in_flight = context.instance.get_run_records(
            dg.RunsFilter(job_name=JOB_NAME, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SkipReason(f"delivery run {in_flight[0].dagster_run.run_id} in flight")
        with jobmanager.engine.connect() as conn:
            due = outbox.work_due(conn)
        if not due:
            return dg.SkipReason("no webhook delivery due")
        return dg.RunRequest()

    return webhook_sensor
