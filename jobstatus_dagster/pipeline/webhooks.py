"""Webhook deliveries as Dagster work: a sensor starts a run when deliveries are due; the run
POSTs them, signed, records every attempt, and retries failures with backoff until the limit.

At least once: the outbox row leaves 'pending' only after a 2xx answer was recorded, so a crash
between the POST and the record sends it again, with the same ``X-Jobstatus-Delivery`` id for
the receiver to de-duplicate on. A job's changes go in order: only the oldest pending delivery
of each (subscription, job) is due, so a receiver that was down gets everything afterwards, in
order per job.
"""

import hashlib
import hmac
import time
from dataclasses import dataclass, field

import dagster as dg
import httpx
import sqlalchemy as sa

from jobstatus_dagster.io import outbox
from jobstatus_dagster.pipeline.resources import PostgresDatabase
from jobstatus_dagster.pipeline.windows import IN_FLIGHT

JOB_NAME = "deliver_webhooks"
SIGNATURE_HEADER = "X-Jobstatus-Signature"
DELIVERY_HEADER = "X-Jobstatus-Delivery"
UPDATE_ID_HEADER = "X-Jobstatus-Update-Id"
# One deliverer at a time (a session lock, so a second run finds it taken and stops).
DELIVERER_LOCK = 7_316_052_210
BATCH = 500


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>``: what a receiver recomputes to trust it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookDelivery(dg.ConfigurableResource):
    """How deliveries are attempted and when they are given up."""

    max_attempts: int = 30
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    timeout_seconds: float = 10.0
    run_seconds: float = 240.0  # one run delivers for at most this long, then the next tick
    # Attempts per subscription per pass: a slow or down receiver costs the others at most
    # this many timeouts per pass (and one, once an attempt of it failed in the pass).
    attempts_per_subscription: int = 5


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed_attempts: int = 0
    given_up: list[str] = field(default_factory=list)
    pending: int = 0
    skipped: bool = False  # another deliverer holds the lock

    def as_metadata(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed_attempts": self.failed_attempts,
            "given_up": len(self.given_up),
            "pending": self.pending,
        }


def _attempt(client: httpx.Client, due: outbox.Due) -> outbox.Outcome:
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(due.secret, due.body),
        DELIVERY_HEADER: due.delivery_id,
        UPDATE_ID_HEADER: str(due.update_id),
        "User-Agent": "jobstatus-webhooks",
    }
    started = time.monotonic()
    try:
        answer = client.post(due.url, content=due.body, headers=headers)
    except Exception as error:  # noqa: BLE001 - whatever one attempt raises is its failure
        # Not only httpx.HTTPError: an unusable stored URL raises httpx.InvalidURL (a plain
        # Exception), which must not end the run and stop every other subscriber's deliveries.
        elapsed = int((time.monotonic() - started) * 1000)
        reason = f"{type(error).__name__}: {error}"[:500]
        return outbox.Outcome(due.outbox_id, False, None, reason, elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    ok = 200 <= answer.status_code < 300
    error = None if ok else f"HTTP {answer.status_code}"
    return outbox.Outcome(due.outbox_id, ok, answer.status_code, error, elapsed)


def _attempt_pass(
    client: httpx.Client, batch: list[outbox.Due], deadline: float
) -> list[tuple[outbox.Due, outbox.Outcome]]:
    """Attempt the batch in its order until the deadline; after a failure, the subscription's
    other deliveries wait for the next pass. What is not attempted stays pending."""
    done: list[tuple[outbox.Due, outbox.Outcome]] = []
    failing: set[int] = set()
    for due in batch:
        if time.monotonic() >= deadline:
            break
        if due.subscription_id in failing:
            continue
        outcome = _attempt(client, due)
        if not outcome.ok:
            failing.add(due.subscription_id)
        done.append((due, outcome))
    return done


def deliver_due(
    jobmanager: sa.Engine,
    settings: WebhookDelivery,
    run_id: str | None = None,
    log: dg.DagsterLogManager | None = None,
) -> DeliveryReport:
    """Deliver what is due, pass after pass, until nothing is due or the run's time is up."""
    report = DeliveryReport()
    deadline = time.monotonic() + settings.run_seconds
    with jobmanager.connect() as lock_conn:
        if not lock_conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": DELIVERER_LOCK}
        ).scalar_one():
            report.skipped = True
            return report
        try:
            with httpx.Client(timeout=settings.timeout_seconds, follow_redirects=False) as client:
                while time.monotonic() < deadline:
                    with jobmanager.connect() as conn:
                        batch = outbox.due_deliveries(
                            conn, BATCH, settings.attempts_per_subscription
                        )
                    if not batch:
                        break
                    attempted = _attempt_pass(client, batch, deadline)
                    with jobmanager.begin() as conn:
                        outbox.record_outcomes(
                            conn,
                            [outcome for _, outcome in attempted],
                            max_attempts=settings.max_attempts,
                            backoff_seconds=settings.backoff_seconds,
                            backoff_max_seconds=settings.backoff_max_seconds,
                            run_id=run_id,
                        )
                    for due, outcome in attempted:
                        if outcome.ok:
                            report.delivered += 1
                            continue
                        report.failed_attempts += 1
                        if due.attempts + 1 >= settings.max_attempts:
                            report.given_up.append(f"{due.delivery_id} to {due.url}")
                        if log is not None:
                            log.warning(
                                f"delivery {due.delivery_id} (update {due.update_id}) to"
                                f" {due.url}: attempt {due.attempts + 1} failed: {outcome.error}"
                            )
        finally:
            lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": DELIVERER_LOCK})
            lock_conn.commit()
    with jobmanager.connect() as conn:
        report.pending = outbox.outbox_summary(conn).get("pending", 0)
    return report


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


DUE_NOW_SQL = sa.text(
    "SELECT EXISTS (SELECT 1 FROM webhook_outbox WHERE state = 'pending'"
    " AND next_attempt_at <= now())"
)


def build_webhook_sensor(interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="webhook_sensor",
        job=deliver_webhooks_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts a delivery run when webhook deliveries are due and none is running.",
    )
    def webhook_sensor(context: dg.SensorEvaluationContext, jobmanager: PostgresDatabase):
        in_flight = context.instance.get_run_records(
            dg.RunsFilter(job_name=JOB_NAME, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SkipReason(f"delivery run {in_flight[0].dagster_run.run_id} in flight")
        with jobmanager.engine.connect() as conn:
            due = conn.execute(DUE_NOW_SQL).scalar_one()
        if not due:
            return dg.SkipReason("no webhook delivery due")
        return dg.RunRequest()

    return webhook_sensor
