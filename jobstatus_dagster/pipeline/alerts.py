"""Alerts: someone is told when a run fails, an ERROR check fails, or a source falls behind.

One sensor looks at three kinds of sign each tick and keeps one incident per subject in
``alert_incidents`` (io/incidents.py): opened at the first sign, cleared once the subject is
well again, with one alert when it opens and one when it clears (one alert only if both happened
between two looks). A window that fails at every retry is one incident, not an alert per run.

- Runs (``run:<source>`` or ``run:<job>``): every RUN_FAILURE in the event log since the cursor
  (a storage id, never a clock) opens or extends its subject's incident; a RUN_SUCCESS clears it
  only when that run was created after the incident's latest failure: a run queued before the
  failure (the next window behind a failing one) proves nothing about the failing window.
- Checks (``check:<asset>:<check>``): a check whose latest evaluation failed with severity ERROR
  opens; its next passing (or merely WARN) evaluation clears.
- Sources (``marker_lag:<source>``, ``failure_age:<source>``): more rows past the marker than
  JOBSTATUS_MAX_MARKER_LAG, or an open data-quality failure older than
  JOBSTATUS_FAILURE_AGE_HOURS: the same thresholds as the checks, looked at every tick.

Alerts go to JOBSTATUS_ALERT_WEBHOOK_URL as JSON whose ``text`` Slack shows (with
JOBSTATUS_ALERT_WEBHOOK_FORMAT=teams, also the Adaptive Card a Teams Workflows webhook posts),
and/or by mail through JOBSTATUS_SMTP_*. An alert that could not be sent is sent at a later tick.
"""

import json
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import dagster as dg
import httpx
import sqlalchemy as sa

from jobstatus_dagster.core.plan import NOT_DATA_QUALITY_REASONS
from jobstatus_dagster.io import incidents
from jobstatus_dagster.io.incidents import Incident
from jobstatus_dagster.io.sources import read_marker, rows_past_marker
from jobstatus_dagster.pipeline.checks import CHECKS
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.source import SOURCES

SENSOR_NAME = "alerts"
RUN_EVENTS_PER_TICK = 500
ALERTS_PER_TICK = 20


@dataclass(frozen=True)
class Sign:
    """One look's verdict on one subject: failing (with what and since when) or well."""

    subject: str
    failing: bool
    at: datetime
    summary: str = ""
    detail: dict[str, Any] | None = None
    by: str = ""  # what showed it well: a run id, a check evaluation, a look
    # A run's success clears only an incident whose latest failure is older than the run.
    only_if_failed_before: datetime | None = None


def apply(conn: sa.Connection, signs: list[Sign]) -> None:
    """Failures first, then recoveries: within one look, the order of a run's failure and a
    later run's success cannot reopen what the success cleared (``only_if_failed_before``)."""
    for sign in (s for s in signs if s.failing):
        incidents.record_failure(conn, sign.subject, sign.summary, sign.detail or {}, sign.at)
    for sign in (s for s in signs if not s.failing):
        incidents.clear(conn, sign.subject, sign.at, sign.by, sign.only_if_failed_before)


# ----- runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertCursor:
    """Where the look at run status events goes on: the last RUN_FAILURE, RUN_SUCCESS and
    RUN_CANCELED storage ids seen. None until the first look, which starts at the newest
    (history is not alerted)."""

    failures_after: int | None = None
    successes_after: int | None = None
    cancels_after: int | None = None

    @classmethod
    def parse(cls, cursor: str | None) -> "AlertCursor":
        try:
            data = json.loads(cursor or "{}")
            return cls(
                data.get("failures_after"), data.get("successes_after"), data.get("cancels_after")
            )
        except (ValueError, AttributeError):
            return cls()

    def dumps(self) -> str:
        return json.dumps(asdict(self))


def _latest_storage_id(instance: dg.DagsterInstance, kind: dg.DagsterEventType) -> int:
    records = instance.fetch_run_status_changes(kind, limit=1, ascending=False).records
    return records[0].storage_id if records else 0


def _status_changes(
    instance: dg.DagsterInstance,
    kind: dg.DagsterEventType,
    after: int,
    before: int | None = None,
) -> list[dg.EventLogRecord]:
    records_filter = dg.RunStatusChangeRecordsFilter(
        event_type=kind, after_storage_id=after, before_storage_id=before
    )
    return list(
        instance.fetch_run_status_changes(
            records_filter, limit=RUN_EVENTS_PER_TICK, ascending=True
        ).records
    )


def run_subject(run: dg.DagsterRun) -> str:
    """A source's runs are one subject whoever launched them (sensor, API, a UI backfill of its
    processing asset); any other job is its own."""
    if SOURCE_TAG in run.tags:
        return f"run:{run.tags[SOURCE_TAG]}"
    for source in SOURCES:
        if run.asset_selection and source.processing_key in run.asset_selection:
            return f"run:{source.name}"
    return f"run:{run.job_name}"


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _capped(records: list[dg.EventLogRecord]) -> int | None:
    """The storage id a capped read stopped before (None when the read was complete)."""
    return records[-1].storage_id + 1 if len(records) == RUN_EVENTS_PER_TICK else None


def run_signs(instance: dg.DagsterInstance, cursor: AlertCursor) -> tuple[list[Sign], AlertCursor]:
    """The signs of the runs that finished since the cursor, and the cursor after them."""
    if cursor.failures_after is None or cursor.successes_after is None:
        start = AlertCursor(
            _latest_storage_id(instance, dg.DagsterEventType.RUN_FAILURE),
            _latest_storage_id(instance, dg.DagsterEventType.RUN_SUCCESS),
            _latest_storage_id(instance, dg.DagsterEventType.RUN_CANCELED),
        )
        return [], start
    cancels_after = cursor.cancels_after
    if cancels_after is None:  # a cursor from before canceled runs were watched: from now on
        cancels_after = _latest_storage_id(instance, dg.DagsterEventType.RUN_CANCELED)
    failures = _status_changes(instance, dg.DagsterEventType.RUN_FAILURE, cursor.failures_after)
    cancels = _status_changes(instance, dg.DagsterEventType.RUN_CANCELED, cancels_after)
    # Never look past where a capped read stopped: a success is judged against every failure
    # and cancel before it (a capped read must not leave one for the next look).
    bounds = [b for b in (_capped(failures), _capped(cancels)) if b is not None]
    bound = min(bounds) if bounds else None
    if bound is not None:
        failures = [r for r in failures if r.storage_id < bound]
        cancels = [r for r in cancels if r.storage_id < bound]
    successes = _status_changes(
        instance, dg.DagsterEventType.RUN_SUCCESS, cursor.successes_after, bound
    )
    run_ids = list({r.run_id for r in failures + cancels + successes})
    records = (
        {
            record.dagster_run.run_id: record
            for record in instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
        }
        if run_ids
        else {}
    )
    signs: list[Sign] = []
    for event, outcome in [(e, "failed") for e in failures] + [(e, "canceled") for e in cancels]:
        record = records.get(event.run_id)
        if record is None:  # deleted since (retention)
            continue
        run = record.dagster_run
        blocking_checks = outcome == "failed" and _failed_only_by_blocking_checks(
            instance, run.run_id
        )
        if blocking_checks:
            # The run did its work; what failed is a blocking ERROR check, whose own incident
            # (check_signs) is the one alert. For the run's subject it counts as a success.
            signs.append(
                Sign(
                    run_subject(run),
                    failing=False,
                    at=_when(event.timestamp),
                    by=f"run {run.run_id} ran (a blocking ERROR check failed: {blocking_checks})",
                    only_if_failed_before=record.create_timestamp.astimezone(UTC),
                )
            )
            continue
        window = run.tags.get(WINDOW_TAG) or run.tags.get("dagster/partition")
        if outcome == "failed":
            message = _run_error(instance, run.run_id) or event.event_log_entry.message or ""
        else:
            message = _cancel_reason(instance, run.run_id) or event.event_log_entry.message or ""
        what = f"run {run.run_id} of {run.job_name}" + (f" ({window})" if window else "")
        signs.append(
            Sign(
                run_subject(run),
                failing=True,
                at=_when(event.timestamp),
                summary=f"{what} {'was canceled' if outcome == 'canceled' else 'failed'}:"
                f" {message}"[:1000],
                detail={
                    "run_id": run.run_id,
                    "job": run.job_name,
                    "window": window,
                    "outcome": outcome,
                },
            )
        )
    for event in successes:
        record = records.get(event.run_id)
        if record is None:
            continue
        signs.append(
            Sign(
                run_subject(record.dagster_run),
                failing=False,
                at=_when(event.timestamp),
                by=f"run {event.run_id} succeeded",
                only_if_failed_before=record.create_timestamp.astimezone(UTC),
            )
        )
    after = AlertCursor(
        failures[-1].storage_id if failures else cursor.failures_after,
        successes[-1].storage_id if successes else cursor.successes_after,
        cancels[-1].storage_id if cancels else cancels_after,
    )
    return signs, after


def _failed_only_by_blocking_checks(instance: dg.DagsterInstance, run_id: str) -> str:
    """The blocking ERROR checks that failed the run when they are all that failed it (every
    failed step failed with DagsterAssetCheckFailedError), else ''."""
    steps = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
    errors = [
        record.event_log_entry.dagster_event.event_specific_data.error
        for record in steps
        if record.event_log_entry.dagster_event is not None
    ]
    if not errors or any(
        error is None or error.cls_name != "DagsterAssetCheckFailedError" for error in errors
    ):
        return ""
    # "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed …"
    return "; ".join(" ".join(e.message.split(": ", 1)[-1].split()) for e in errors)


def _cancel_reason(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why the run was stopped: the canceling request's message (run monitoring says "Canceling
    due to exceeding maximum runtime …"), then what the cancellation itself said."""
    reasons = []
    for kind in (dg.DagsterEventType.RUN_CANCELING, dg.DagsterEventType.RUN_CANCELED):
        for record in instance.get_records_for_run(run_id, of_type=kind, limit=1).records:
            message = record.event_log_entry.message or ""
            if message and message not in reasons:
                reasons.append(message.splitlines()[0])
    return " ".join(reasons) or None


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    from jobstatus_dagster.pipeline.queue import run_error

    error = run_error(instance, run_id)
    return error.splitlines()[0] if error else None


# ----- checks --------------------------------------------------------------------------------


def check_signs(instance: dg.DagsterInstance) -> list[Sign]:
    """Each check's latest completed evaluation: failed with ERROR severity, or not."""
    from dagster._core.storage.asset_check_execution_record import (
        AssetCheckExecutionRecordStatus,
    )

    keys = [key for checks in CHECKS for key in checks.check_keys]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    signs = []
    for key, record in latest.items():
        if record.status is AssetCheckExecutionRecordStatus.PLANNED or record.event is None:
            continue  # running now (or never finished: its run's failure is the sign)
        evaluation = record.event.dagster_event.event_specific_data
        subject = f"check:{key.asset_key.to_user_string()}:{key.name}"
        failing = not evaluation.passed and evaluation.severity is dg.AssetCheckSeverity.ERROR
        metadata = {k: str(v.value) for k, v in evaluation.metadata.items()}
        signs.append(
            Sign(
                subject,
                failing,
                _when(record.create_timestamp),
                summary=f"ERROR check {key.name} on {key.asset_key.to_user_string()} failed:"
                f" {', '.join(f'{k}={v}' for k, v in metadata.items())}"[:1000],
                detail={"run_id": record.run_id, **metadata},
                by=f"check passed in run {record.run_id}",
            )
        )
    return signs


# ----- sources -------------------------------------------------------------------------------


def lag_clears_at(lag_limit: int) -> int:
    """Hysteresis: a marker-lag incident opens above JOBSTATUS_MAX_MARKER_LAG rows and clears
    only once at most half as many wait, so a backlog hovering at the threshold (a busy shift,
    windows of JOBSTATUS_CHUNK_SIZE taking turns with new rows) is one incident, not one per
    crossing."""
    return lag_limit // 2


def source_signs(
    conn: sa.Connection,
    processing: ProcessingSettings,
    now: datetime,
    open_subjects: Collection[str] = (),
) -> list[Sign]:
    """Per source: rows past the marker against JOBSTATUS_MAX_MARKER_LAG (with hysteresis,
    ``lag_clears_at``), and the oldest open data-quality failure (R20) against
    JOBSTATUS_FAILURE_AGE_HOURS. ``open_subjects``: the incidents open before this look."""
    lag_limit, age_hours = processing.max_marker_lag, processing.failure_age_hours
    clears_at = lag_clears_at(lag_limit)
    signs = []
    for source in SOURCES:
        subject = f"marker_lag:{source.name}"
        behind = rows_past_marker(conn, source.name, lag_limit + 1)
        marker = read_marker(conn, source.name)
        if subject in open_subjects and clears_at < behind <= lag_limit:
            pass  # between the two bounds: an open incident stays open, unextended
        else:
            signs.append(
                Sign(
                    subject,
                    behind > lag_limit,
                    now,
                    summary=f"{source.name} is more than {lag_limit} rows behind: marker"
                    f" {marker} is not moving fast enough",
                    detail={"marker": marker, "rows_behind_at_least": behind},
                    by=f"{behind} rows past marker {marker} (clears at {clears_at} or fewer)",
                )
            )
        age_seconds = conn.execute(
            sa.text(
                "SELECT extract(epoch FROM localtimestamp - min(first_attempt_at))"
                " FROM processing_failures WHERE resolved_at IS NULL AND source_type = :source"
                " AND reason <> ALL(:not_data_quality)"
            ),
            {"source": source.name, "not_data_quality": sorted(NOT_DATA_QUALITY_REASONS)},
        ).scalar_one()
        age = timedelta(seconds=float(age_seconds or 0))
        limit = timedelta(hours=age_hours)
        signs.append(
            Sign(
                f"failure_age:{source.name}",
                age > limit,
                now - (age - limit) if age > limit else now,  # when it crossed the threshold
                summary=f"{source.name} has a failure unresolved for {age_hours:g} h or more"
                " (see processing_failures)",
                detail={"oldest_open_failure_hours": round(age.total_seconds() / 3600, 2)},
                by="no open failure that old",
            )
        )
    return signs


# ----- sending -------------------------------------------------------------------------------


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def alert_text(incident: Incident) -> str:
    """One line a person reads in a chat or a mail subject, then the first sign."""
    if incident.cleared_at is None:
        head = f"[jobstatus] FAILING since {_iso(incident.started_at)}: {incident.subject}"
    else:
        head = (
            f"[jobstatus] CLEARED at {_iso(incident.cleared_at)}: {incident.subject}"
            f" (failing since {_iso(incident.started_at)}, {incident.failures} sign(s);"
            f" {incident.cleared_by})"
        )
    return f"{head}\n{incident.summary}"


def _incident_json(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.incident_id,
        "subject": incident.subject,
        "state": "open" if incident.cleared_at is None else "cleared",
        "started_at": _iso(incident.started_at),
        "cleared_at": _iso(incident.cleared_at),
        "last_failed_at": _iso(incident.last_failed_at),
        "failures": incident.failures,
        "summary": incident.summary,
        "detail": incident.detail,
    }


def adaptive_card(incident: Incident) -> dict[str, Any]:
    """The alert as an Adaptive Card: what a Teams Workflows webhook ("When a Teams webhook
    request is received" → "Post card in a chat or channel") posts; it shows no ``text``."""
    head, _, summary = alert_text(incident).partition("\n")
    facts = _incident_json(incident)
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": head,
                "weight": "Bolder",
                "wrap": True,
                "color": "Attention" if incident.cleared_at is None else "Good",
            },
            {"type": "TextBlock", "text": summary, "wrap": True},
            {
                "type": "FactSet",
                "facts": [
                    {"title": name, "value": str(facts[name])}
                    for name in ("subject", "state", "started_at", "cleared_at", "failures")
                    if facts[name] is not None
                ],
            },
        ],
    }


WEBHOOK_FORMATS = ("slack", "teams")


def alert_body(incident: Incident, webhook_format: str = "slack") -> dict[str, Any]:
    """The webhook's JSON. ``slack``: ``text``, which Slack incoming webhooks (and Mattermost,
    Rocket.Chat, Google Chat) show, and ``incident`` for programs. ``teams``: the same plus
    ``type: message`` and the Adaptive Card in ``attachments``, the shape Teams Workflows
    webhooks take (they show no ``text``). Not both by default: Slack reads ``attachments`` as
    its own legacy attachments."""
    body: dict[str, Any] = {"text": alert_text(incident), "incident": _incident_json(incident)}
    if webhook_format == "teams":
        body["type"] = "message"
        body["attachments"] = [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": adaptive_card(incident),
            }
        ]
    return body


class AlertNotSent(RuntimeError):
    """No channel took the alert (each one's failure in the message): it is sent again later."""


class AlertChannels(dg.ConfigurableResource):
    """Where alerts go; empty values mean that channel is off."""

    webhook_url: str = ""
    webhook_format: str = "slack"  # WEBHOOK_FORMATS: "teams" for a Teams Workflows webhook
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_to: str = ""
    timeout_seconds: float = 10.0

    @property
    def configured(self) -> list[str]:
        return [
            name
            for name, on in (
                ("webhook", bool(self.webhook_url)),
                ("mail", bool(self.smtp_host and self.smtp_to)),
            )
            if on
        ]

    def send(self, incident: Incident, taken: Callable[[], None] | None = None) -> list[str]:
        """Send on every configured channel, each on its own: a broken webhook never keeps the
        mail back. Told once at least one channel took it (sending again would repeat it on
        the channels that did): ``taken`` is called right then, before the next channel is
        tried, so a process ended while a slow channel is tried has still recorded it. Raises
        only when every channel failed (sent again later). Returns the failures of the
        channels that did not take it."""
        failures: list[str] = []
        told = False
        for name, channel in (("webhook", self._post), ("mail", self._mail)):
            if name not in self.configured:
                continue
            try:
                channel(incident)
            except Exception as error:  # noqa: BLE001 - a channel's failure, reported
                failures.append(f"{name}: {type(error).__name__}: {error}")
                continue
            if not told and taken is not None:
                taken()
            told = True
        if not told:
            raise AlertNotSent("; ".join(failures))
        return failures

    def _post(self, incident: Incident) -> None:
        answer = httpx.post(
            self.webhook_url,
            json=alert_body(incident, self.webhook_format),
            timeout=self.timeout_seconds,
            headers={"User-Agent": "jobstatus-alerts"},
        )
        answer.raise_for_status()

    def _mail(self, incident: Incident) -> None:
        message = EmailMessage()
        text = alert_text(incident)
        message["Subject"] = text.splitlines()[0]
        message["From"] = self.smtp_from or "jobstatus@localhost"
        message["To"] = self.smtp_to
        message.set_content(text + "\n\n" + json.dumps(alert_body(incident)["incident"], indent=2))
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=self.timeout_seconds) as smtp:
            if self.smtp_starttls:  # verified: the password never goes to an unchecked server
                smtp.starttls(context=ssl.create_default_context())
            if self.smtp_user:
                smtp.login(self.smtp_user, self.smtp_password)
            smtp.send_message(message)


def send_unsent(
    engine: sa.Engine,
    channels: AlertChannels,
    log: dg.DagsterLogManager | logging.Logger | None = None,
    *,
    watchdog: bool = False,
    start_before: float | None = None,
) -> tuple[int, int]:
    """Send what has not gone out; (sent, failed). With no channel configured, incidents are
    marked as told (the table and the sensor's page are then the only place they show).
    ``watchdog``: the watchdog's own incidents (``service:…``) instead of the sensor's.
    ``start_before`` (a ``time.monotonic()``): no alert is started later; those left count as
    failed (sent next time).

    Each alert is marked sent as soon as its first channel took it, before the next channel is
    tried: between a channel taking it and the mark there is only one short transaction, so a
    process ended in the middle (a tick's or the watchdog unit's time limit) sends that alert
    again at worst, and a slow second channel never makes every look repeat the first one. The
    price: a process ended while a second channel is being tried leaves that channel without
    this alert (the first one has it), as a channel that failed always did."""
    with engine.connect() as conn:
        pending = incidents.unsent(conn, ALERTS_PER_TICK, watchdog=watchdog)
    sent = failed = 0
    for incident in pending:
        if start_before is not None and time.monotonic() >= start_before:
            failed += 1
            if log:
                log.warning(f"alert for {incident.subject} not sent: no time left, next time")
            continue

        def mark(incident: Incident = incident) -> None:
            with engine.begin() as conn:
                incidents.mark_sent(conn, incident, datetime.now(UTC))

        if not channels.configured:
            mark()
            sent += 1
            continue
        try:
            partly = channels.send(incident, taken=mark)  # a failing mark raises from here
        except AlertNotSent as error:  # every channel failed: sent again next tick
            failed += 1
            if log:
                log.warning(f"alert for {incident.subject} not sent: {error}")
            continue
        if partly and log:
            log.warning(f"alert for {incident.subject} not sent on {'; '.join(partly)}")
        sent += 1
    return sent, failed


def look_for_trouble(
    context: dg.SensorEvaluationContext,
    jobmanager: PostgresDatabase,
    processing: ProcessingSettings,
    channels: AlertChannels,
) -> dg.SensorResult:
    """One tick: gather signs, update incidents, send what is owed, say what is open."""
    now = datetime.now(UTC)
    cursor = AlertCursor.parse(context.cursor)
    signs, after = run_signs(context.instance, cursor)
    signs += check_signs(context.instance)
    engine = jobmanager.engine
    with engine.begin() as conn:
        open_subjects = set(incidents.open_incidents(conn))
        signs += source_signs(conn, processing.resolved(), now, open_subjects)
        apply(conn, signs)
    sent, failed = send_unsent(engine, channels, context.log)
    with engine.connect() as conn:
        still_open = sorted(incidents.open_incidents(conn))
    channels_text = ", ".join(channels.configured) or "no channel configured"
    status = f"open: {', '.join(still_open)}" if still_open else "nothing failing"
    return dg.SensorResult(
        skip_reason=f"{status}; alerts sent {sent}, failed {failed} ({channels_text})",
        cursor=after.dumps(),
    )


def build_alert_sensor(interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Every {interval_seconds} s: failed runs, failing ERROR checks and sources past"
            " their thresholds become incidents (table alert_incidents); one alert when an"
            " incident opens and one when it clears, to JOBSTATUS_ALERT_WEBHOOK_URL and/or by"
            " mail (JOBSTATUS_SMTP_*)."
        ),
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        jobmanager: PostgresDatabase,
        processing: ProcessingSettings,
        alert_channels: AlertChannels,
    ) -> dg.SensorResult:
        return look_for_trouble(context, jobmanager, processing, alert_channels)

    return _sensor
