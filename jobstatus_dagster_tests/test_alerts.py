"""Alerts (issue 20): a failed run, a failing ERROR check, a source past its thresholds each
become one incident, alerted once when it opens and once when it clears, to a real HTTP
receiver and a real SMTP server on 127.0.0.1, from ticks of the real sensor on a real instance."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from jobstatus_dagster.pipeline.alerts import SENSOR_NAME, AlertChannels
from jobstatus_dagster.pipeline.resources import PostgresDatabase
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.processes import free_port
from jobstatus_testkit.receivers import HttpReceiver, http_receiver, smtp_receiver


class Alerts:
    """Ticks of the alert sensor, its cursor carried from one to the next as the daemon does."""

    def __init__(self, shop: Shop, instance: dg.DagsterInstance, channels: AlertChannels) -> None:
        self.shop, self.instance, self.channels = shop, instance, channels
        self.cursor: str | None = None
        self.skip_message = ""

    def tick(self) -> None:
        sensor = self.shop.definitions().resolve_sensor_def(SENSOR_NAME)
        resources = {
            "jobmanager": PostgresDatabase(url=self.shop.urls.jobmanager),
            "processing": self.shop.processing,
            "alert_channels": self.channels,
        }
        with dg.build_sensor_context(
            instance=self.instance, resources=resources, cursor=self.cursor
        ) as context:
            result = sensor(context)
        assert isinstance(result, dg.SensorResult) and not result.run_requests
        self.cursor = result.cursor
        self.skip_message = result.skip_reason.skip_message

    def incident(self, subject: str) -> list[dict]:
        return self.shop.rows(
            self.shop.jm,
            "SELECT * FROM alert_incidents WHERE subject = :s ORDER BY incident_id",
            s=subject,
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def alerts(urls, instance, receiver) -> Iterator[Alerts]:
    with Shop(urls, max_marker_lag=2, failure_age_hours=24) as shop:
        watcher = Alerts(shop, instance, AlertChannels(webhook_url=receiver.url))
        watcher.tick()  # the first look starts at the newest run event: history is not alerted
        yield watcher


def sent(receiver: HttpReceiver, subject: str) -> list[dict]:
    return [b for b in receiver.bodies if b["incident"]["subject"] == subject]


def queued_run(shop: Shop, instance: dg.DagsterInstance, window: str) -> dg.DagsterRun:
    job = shop.definitions().resolve_job_def("process_print_os")
    return instance.create_run_for_job(
        job,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={"jobstatus/source": "print_os", "jobstatus/window": window},
    )


def succeed(instance: dg.DagsterInstance, run: dg.DagsterRun) -> None:
    """The run's worker reporting success (what a run worker writes at its end)."""
    event = dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_SUCCESS.value,
        job_name=run.job_name,
        message="Finished execution of run.",
    )
    instance.report_dagster_event(event, run_id=run.run_id)


def test_a_window_failing_at_every_retry_is_one_incident_cleared_by_a_run_asked_for_after(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    shop, subject = alerts.shop, "run:print_os"
    first = queued_run(shop, instance, "print_os:10-20")
    behind = queued_run(shop, instance, "print_os:20-30")  # queued in the same tick
    instance.report_run_failed(first, "load_print_os_window: connection refused")
    alerts.tick()
    (opened,) = sent(receiver, subject)
    assert opened["text"].startswith("[jobstatus] FAILING since ")
    assert opened["text"].endswith(
        f"run {first.run_id} of process_print_os (print_os:10-20) failed:"
        " load_print_os_window: connection refused"
    )
    assert opened["incident"]["state"] == "open"
    assert alerts.skip_message.startswith(f"open: {subject}; alerts sent 1")

    # The sensor asks for the window again; it fails again: the same incident, no new alert.
    retry = queued_run(shop, instance, "print_os:10-20")
    instance.report_run_failed(retry, "load_print_os_window: connection refused")
    # The window queued behind the failing one succeeds: it proves nothing about it.
    succeed(instance, behind)
    alerts.tick()
    assert len(sent(receiver, subject)) == 1
    (incident,) = alerts.incident(subject)
    assert incident["cleared_at"] is None and incident["failures"] == 2

    # A run asked for after the last failure succeeds: cleared, once, saying since when.
    shop.print_event("AL-OK", "PRINTED")
    outcome = shop.process(instance)
    alerts.tick()
    alerts.tick()
    opened_, cleared = sent(receiver, subject)
    assert opened_ == opened
    (incident,) = alerts.incident(subject)
    assert cleared["incident"]["state"] == "cleared"
    assert cleared["incident"]["started_at"] == opened["incident"]["started_at"]
    assert cleared["text"].startswith(
        f"[jobstatus] CLEARED at {cleared['incident']['cleared_at']}: {subject} (failing since"
        f" {opened['incident']['started_at']}, 2 sign(s); run {outcome.runs[-1].run_id} succeeded)"
    )
    assert incident["cleared_sent_at"] is not None
    assert alerts.skip_message.startswith("nothing failing")

    # A later failure is a new incident, alerted anew.
    again = queued_run(shop, instance, "print_os:40-50")
    instance.report_run_failed(again, "boom")
    alerts.tick()
    assert [b["incident"]["state"] for b in sent(receiver, subject)] == ["open", "cleared", "open"]
    assert len(alerts.incident(subject)) == 2
    shop.print_event("AL-OK", "PRINTED")
    shop.process(instance)
    alerts.tick()
    assert [b["incident"]["state"] for b in sent(receiver, subject)][-1] == "cleared"


def test_an_alert_the_receiver_refused_is_sent_at_the_next_tick(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    run = instance.create_run_for_job(
        alerts.shop.definitions().resolve_job_def("deliver_webhooks"),
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    receiver.failures_left = 1
    attempts = receiver.attempts
    instance.report_run_failed(run, "receiver down")
    alerts.tick()
    assert receiver.attempts == attempts + 1 and sent(receiver, "run:deliver_webhooks") == []
    assert "alerts sent 0, failed 1" in alerts.skip_message
    (incident,) = alerts.incident("run:deliver_webhooks")
    assert incident["opened_sent_at"] is None
    alerts.tick()
    assert len(sent(receiver, "run:deliver_webhooks")) == 1
    alerts.tick()
    assert len(sent(receiver, "run:deliver_webhooks")) == 1
    job = alerts.shop.definitions().resolve_job_def("deliver_webhooks")
    assert job.execute_in_process(instance=instance).success
    alerts.tick()
    assert [b["incident"]["state"] for b in sent(receiver, "run:deliver_webhooks")] == [
        "open",
        "cleared",
    ]


def run_checks(shop: Shop, instance) -> dg.ExecuteInProcessResult:
    job = shop.definitions().resolve_job_def("data_quality_checks")
    return job.execute_in_process(instance=instance, raise_on_error=False)


def evaluation(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    (found,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return found


def test_a_failing_error_check_fails_its_run_and_is_one_incident_until_it_passes(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    """The print-flag check is ERROR and blocking: it fails its run. That run failure is the
    check's incident, not a second one for the checks job (one alert per incident)."""
    shop = alerts.shop
    subject = "check:jobmanager/jobs_operations:print_flag_agrees_with_job_operations"
    shop.add_job("9301_1")
    shop.add_job_operation("9301_1", "1")
    shop.map_files("AL-I1", ["FILE_1_Labex_9301_1_1"])
    shop.print_event("AL-I1", "PRINTED")
    shop.process(instance)
    assert run_checks(shop, instance).success
    alerts.tick()
    assert sent(receiver, subject) == []

    flag = (
        "UPDATE jobs SET operations = jsonb_set(operations, '{print}', :v) WHERE job_id = '9301_1'"
    )
    shop.execute(shop.jm, flag, {"v": "false"})  # disagrees with the completed print row
    failing = run_checks(shop, instance)
    assert not failing.success  # blocking: the run fails
    assert not evaluation(failing, "print_flag_agrees_with_job_operations").passed
    alerts.tick()
    assert not run_checks(shop, instance).success  # failing again: the same incident
    alerts.tick()
    (opened,) = sent(receiver, subject)
    assert "ERROR check print_flag_agrees_with_job_operations" in opened["text"]
    assert "disagreeing=1" in opened["text"]
    assert sent(receiver, "run:data_quality_checks") == []
    (incident,) = alerts.incident(subject)
    assert incident["failures"] == 2 and incident["cleared_at"] is None

    shop.execute(shop.jm, flag, {"v": "true"})
    assert run_checks(shop, instance).success
    alerts.tick()
    assert [b["incident"]["state"] for b in sent(receiver, subject)] == ["open", "cleared"]
    assert sent(receiver, "run:data_quality_checks") == []
    assert alerts.incident("run:data_quality_checks") == []


def test_a_checks_run_that_fails_for_another_reason_is_a_run_incident(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    """Only a run failed by blocking checks alone is left to the checks' incidents."""
    run = instance.create_run_for_job(
        alerts.shop.definitions().resolve_job_def("data_quality_checks"),
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    instance.report_run_failed(run, "could not connect to server")
    alerts.tick()
    (opened,) = sent(receiver, "run:data_quality_checks")
    assert "could not connect to server" in opened["text"]
    assert run_checks(alerts.shop, instance).success
    alerts.tick()
    assert [b["incident"]["state"] for b in sent(receiver, "run:data_quality_checks")] == [
        "open",
        "cleared",
    ]


def test_a_failing_warn_check_is_not_an_incident(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    shop, name = alerts.shop, "file_ids_match_the_pattern"
    shop.execute(
        shop.logs,
        "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES ('AL-X', 'scan.pdf')",
    )
    try:
        result = run_checks(shop, instance)
        warned = evaluation(result, name)
        assert not warned.passed and warned.severity is dg.AssetCheckSeverity.WARN
        assert result.success  # WARN checks never fail their run
        alerts.tick()
        assert [b for b in receiver.bodies if name in b["incident"]["subject"]] == []
        assert alerts.incident(f"check:logs/imposition_file_mapping:{name}") == []
    finally:
        shop.execute(shop.logs, "DELETE FROM imposition_file_mapping WHERE imposition_id = 'AL-X'")
        assert run_checks(shop, instance).success


def test_a_source_past_its_thresholds_is_alerted_by_webhook_and_mail(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    shop = alerts.shop
    with smtp_receiver() as smtp:
        mailing = Alerts(
            shop,
            instance,
            AlertChannels(
                webhook_url=receiver.url,
                smtp_host=smtp.host,
                smtp_port=smtp.port,
                smtp_from="jobstatus@shop.example",
                smtp_to="ops@shop.example",
            ),
        )
        mailing.cursor = alerts.cursor
        shop.process(instance)
        for _ in range(3):  # JOBSTATUS_MAX_MARKER_LAG=2
            shop.print_event("AL-LAG", "PRINTED")
        old = datetime.now(UTC) - timedelta(hours=30)
        shop.execute(
            shop.jm,
            "INSERT INTO processing_failures (source_type, source_id, reason, subject,"
            " first_attempt_at) VALUES ('scanner', -7, 'unrecognised_code', 'AL-OLD',"
            " CAST(:at AS timestamptz) AT TIME ZONE current_setting('TimeZone'))",
            {"at": old},
        )
        mailing.tick()
        (lag,) = sent(receiver, "marker_lag:print_os")
        assert "print_os is more than 2 rows behind" in lag["text"]
        (age,) = sent(receiver, "failure_age:scanner")
        # It started when the oldest failure crossed 24 h, not when the sensor noticed.
        started = datetime.strptime(age["incident"]["started_at"], "%Y-%m-%d %H:%M:%SZ")
        assert abs(started.replace(tzinfo=UTC) - (old + timedelta(hours=24))) < timedelta(seconds=5)
        assert {m["Subject"] for m in smtp.mails} == {
            lag["text"].splitlines()[0],
            age["text"].splitlines()[0],
        }
        assert all(m["To"] == "ops@shop.example" for m in smtp.mails)

        shop.process(instance)
        shop.execute(
            shop.jm, "UPDATE processing_failures SET resolved_at = now() WHERE source_id = -7"
        )
        mailing.tick()
        mailing.tick()
        assert [b["incident"]["state"] for b in sent(receiver, "marker_lag:print_os")] == [
            "open",
            "cleared",
        ]
        assert [b["incident"]["state"] for b in sent(receiver, "failure_age:scanner")] == [
            "open",
            "cleared",
        ]
        assert len(smtp.mails) == 4
        assert sum(m["Subject"].startswith("[jobstatus] CLEARED") for m in smtp.mails) == 2
        alerts.cursor = mailing.cursor


def test_the_alert_sensor_and_the_retention_schedule_run_by_default(monkeypatch) -> None:
    """From the settings, as the code location builds them: on by default, at the configured
    interval, the retention job hourly."""
    from jobstatus_dagster.config import load_settings
    from jobstatus_dagster.definitions import definitions_from_settings

    monkeypatch.setenv("JOBSTATUS_ALERT_INTERVAL_SECONDS", "45")
    defs = definitions_from_settings(load_settings(), "postgresql://x@/jm", "postgresql://x@/logs")
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    assert sensor.default_status is dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 45
    schedule = defs.resolve_schedule_def("prune_dagster_history_hourly")
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "prune_dagster_history" and schedule.cron_schedule == "17 * * * *"


def test_alert_secrets_reach_the_sensor_as_environment_variables(monkeypatch) -> None:
    """The chat webhook URL holds a token and the SMTP password is one: the resource names the
    variables (the UI shows names, not values); unset, the channel is off."""
    from jobstatus_dagster.config import load_settings
    from jobstatus_dagster.definitions import alert_channels_from_settings

    for name in ("ALERT_WEBHOOK_URL", "SMTP_HOST", "SMTP_TO", "SMTP_PASSWORD"):
        monkeypatch.delenv(f"JOBSTATUS_{name}", raising=False)
    assert alert_channels_from_settings(load_settings()).configured == []

    monkeypatch.setenv("JOBSTATUS_ALERT_WEBHOOK_URL", "https://hooks.example/T0/B0/secret")
    monkeypatch.setenv("JOBSTATUS_SMTP_HOST", "mail.shop.example")
    monkeypatch.setenv("JOBSTATUS_SMTP_TO", "ops@shop.example")
    monkeypatch.setenv("JOBSTATUS_SMTP_PASSWORD", "hunter2")
    monkeypatch.setenv("JOBSTATUS_ALERT_WEBHOOK_FORMAT", "teams")
    channels = alert_channels_from_settings(load_settings())
    assert channels.webhook_url == dg.EnvVar("JOBSTATUS_ALERT_WEBHOOK_URL")
    assert channels.smtp_password == dg.EnvVar("JOBSTATUS_SMTP_PASSWORD")
    assert channels.smtp_host == "mail.shop.example"
    assert channels.webhook_format == "teams"
    assert "secret" not in repr(channels) and "hunter2" not in repr(channels)
    # Outside Dagster (`jobstatus watchdog`) nothing resolves an EnvVar: the values themselves.
    direct = alert_channels_from_settings(load_settings(), secrets=True)
    assert direct.webhook_url == "https://hooks.example/T0/B0/secret"
    assert direct.smtp_password == "hunter2"


def test_a_broken_webhook_never_keeps_the_mail_back_and_nothing_is_sent_twice(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    """From the review of issue 20: the webhook was posted first and its failure raised, so
    the mail never went; and a mail failure after a delivered webhook re-sent the webhook at
    every tick. Each channel is tried on its own; an incident is told once one took it."""
    with smtp_receiver() as smtp:
        mailing = Alerts(
            alerts.shop,
            instance,
            AlertChannels(
                webhook_url=f"http://127.0.0.1:{free_port()}/nobody",
                smtp_host=smtp.host,
                smtp_port=smtp.port,
                smtp_to="ops@shop.example",
            ),
        )
        mailing.cursor = alerts.cursor
        run = instance.create_run_for_job(
            alerts.shop.definitions().resolve_job_def("deliver_webhooks"),
            status=dg.DagsterRunStatus.NOT_STARTED,
        )
        instance.report_run_failed(run, "for the mail")
        mailing.tick()
        mailing.tick()
        about = [m["Subject"] for m in smtp.mails if "deliver_webhooks" in m["Subject"]]
        assert len(about) == 1 and not about[0].startswith("[jobstatus] CLEARED"), about
        job = alerts.shop.definitions().resolve_job_def("deliver_webhooks")
        assert job.execute_in_process(instance=instance).success
        mailing.tick()
        mailing.tick()
        about = [m["Subject"] for m in smtp.mails if "deliver_webhooks" in m["Subject"]]
        assert len(about) == 2 and about[1].startswith("[jobstatus] CLEARED"), about
        alerts.cursor = mailing.cursor


def test_a_canceled_processing_run_is_one_incident_saying_it_was_canceled(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    """Run monitoring cancels a run past max_runtime_seconds (dagster.yaml): the window was not
    processed, so it is alerted like a failure, saying it was canceled and why."""
    shop, subject = alerts.shop, "run:print_os"
    before = len(sent(receiver, subject))

    def canceled(window: str) -> dg.DagsterRun:
        run = queued_run(shop, instance, window)
        # What run monitoring writes (dagster/_daemon/monitoring/run_monitoring.py).
        instance.report_run_canceling(
            run, message="Canceling due to exceeding maximum runtime of 3600 seconds."
        )
        instance.report_run_canceled(run)
        return run

    first = canceled("print_os:60-70")
    alerts.tick()
    (opened,) = sent(receiver, subject)[before:]
    assert opened["text"].endswith(
        f"run {first.run_id} of process_print_os (print_os:60-70) was canceled: Canceling due to"
        " exceeding maximum runtime of 3600 seconds. This run has been marked as canceled from"
        " outside the execution context."
    )
    assert opened["incident"]["detail"]["outcome"] == "canceled"

    canceled("print_os:60-70")  # asked for again, canceled again: the same incident
    alerts.tick()
    assert len(sent(receiver, subject)) == before + 1
    incident = alerts.incident(subject)[-1]
    assert incident["failures"] == 2 and incident["cleared_at"] is None

    shop.print_event("AL-OK", "PRINTED")
    outcome = shop.process(instance)
    alerts.tick()
    cleared = sent(receiver, subject)[-1]
    assert [b["incident"]["state"] for b in sent(receiver, subject)[before:]] == ["open", "cleared"]
    assert f"run {outcome.runs[-1].run_id} succeeded" in cleared["text"]


def test_a_marker_lag_hovering_at_its_threshold_is_one_incident(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    """Hysteresis: above JOBSTATUS_MAX_MARKER_LAG (2 here) opens; it clears only at half of it
    (1) or less, so a backlog going 3, 2, 3, 2 … is one incident, not one per crossing."""
    shop, subject = alerts.shop, "marker_lag:print_os"
    shop.process(instance)
    alerts.tick()
    before, incidents_before = len(sent(receiver, subject)), len(alerts.incident(subject))
    for _ in range(4):
        shop.print_event("AL-HOVER", "PRINTED")

    def lag(rows: int) -> None:
        """The processor's marker ``rows`` short of the newest print row."""
        shop.execute(
            shop.jm,
            "UPDATE processing_markers SET last_processed_id ="
            " (SELECT max(marker) FROM \"print OS\") - :n WHERE marker_type = 'print_os'",
            {"n": rows},
        )
        alerts.tick()

    for rows in (3, 2, 3, 2, 3, 2, 3):
        lag(rows)
    assert [b["incident"]["state"] for b in sent(receiver, subject)[before:]] == ["open"]
    lag(2)
    (incident,) = alerts.incident(subject)[incidents_before:]
    assert incident["cleared_at"] is None and incident["failures"] == 4
    lag(1)
    assert [b["incident"]["state"] for b in sent(receiver, subject)[before:]] == [
        "open",
        "cleared",
    ]
    assert "1 rows past marker" in sent(receiver, subject)[-1]["text"]
    lag(2)  # below the threshold again: stays cleared
    assert len(alerts.incident(subject)) == incidents_before + 1
    shop.process(instance)


def test_teams_format_posts_an_adaptive_card_beside_the_text(
    alerts: Alerts, receiver: HttpReceiver, instance
) -> None:
    """A Teams Workflows webhook posts the Adaptive Card in ``attachments`` and shows no
    ``text``; Slack's body (the default) carries no ``attachments`` (Slack would read them as
    its own)."""
    assert all("attachments" not in body for body in receiver.bodies)
    teams = Alerts(
        alerts.shop, instance, AlertChannels(webhook_url=receiver.url, webhook_format="teams")
    )
    teams.cursor = alerts.cursor
    job = alerts.shop.definitions().resolve_job_def("deliver_webhooks")
    run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.NOT_STARTED)
    instance.report_run_failed(run, "for Teams")
    count = len(receiver.bodies)
    teams.tick()
    (opened,) = receiver.bodies[count:]
    assert opened["type"] == "message" and opened["incident"]["state"] == "open"
    (attachment,) = opened["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    head, summary, facts = card["body"]
    assert head["text"] == opened["text"].splitlines()[0] and head["color"] == "Attention"
    assert summary["text"] == f"run {run.run_id} of deliver_webhooks failed: for Teams"
    assert {"title": "subject", "value": "run:deliver_webhooks"} in facts["facts"]

    assert job.execute_in_process(instance=instance).success
    teams.tick()
    (cleared,) = receiver.bodies[count + 1 :]
    head = cleared["attachments"][0]["content"]["body"][0]
    assert head["text"].startswith("[jobstatus] CLEARED") and head["color"] == "Good"
    alerts.cursor = teams.cursor
