"""The code location: read top to bottom as a table of contents."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from pydantic import SecretStr

from jobstatus_dagster.config import DATABASE_URL_VARIABLES, Settings, load_settings
from jobstatus_dagster.pipeline.alerts import AlertChannels, build_alert_sensor
from jobstatus_dagster.pipeline.assets import SOURCE_SPECS, TARGET_SPECS
from jobstatus_dagster.pipeline.checks import CHECKS, checks_job, checks_schedule
from jobstatus_dagster.pipeline.ops import SOURCE_TAG
from jobstatus_dagster.pipeline.print_os import print_os_processing
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.retention import (
    RetentionPolicy,
    prune_dagster_history,
    retention_schedule,
)
from jobstatus_dagster.pipeline.scanner import scanner_processing
from jobstatus_dagster.pipeline.sensors import build_source_sensor
from jobstatus_dagster.pipeline.stale_runs import fail_stalled_runs
from jobstatus_dagster.pipeline.webhooks import (
    WebhookDelivery,
    build_webhook_sensor,
    deliver_webhooks_job,
)
from jobstatus_dagster.source import PRINT_OS_SOURCE, SCANNER_SOURCE, Source


def processing_job(source: Source) -> UnresolvedAssetJobDefinition:
    """One job per source, so its runs carry the source tag (sensors and the API find a source's
    runs by it); one run per source at a time is the pool on the source's load op (dagster.yaml,
    docs/rules.md §6)."""
    return dg.define_asset_job(
        source.job_name,
        selection=dg.AssetSelection.assets(source.processing_key),
        executor_def=dg.in_process_executor,
        tags={SOURCE_TAG: source.name},
        description=f"Process one marker window of the {source.name} source.",
    )


def build_definitions(
    jobmanager_url: str | dg.EnvVar,
    logs_url: str | dg.EnvVar,
    print_os_interval_seconds: int = 30,
    scanner_interval_seconds: int = 30,
    processing: ProcessingSettings | None = None,
    webhooks: WebhookDelivery | None = None,
    webhook_interval_seconds: int = 10,
    alert_channels: AlertChannels | None = None,
    alert_interval_seconds: int = 30,
    retention: RetentionPolicy | None = None,
) -> dg.Definitions:
    """Everything assembled; ``processing`` defaults to the documented values (tests, scripts)."""
    process_print_os, process_scanner = (
        processing_job(PRINT_OS_SOURCE),
        processing_job(SCANNER_SOURCE),
    )
    return dg.Definitions(
        assets=[*SOURCE_SPECS, print_os_processing, scanner_processing, *TARGET_SPECS],
        asset_checks=CHECKS,
        jobs=[
            process_print_os,
            process_scanner,
            checks_job,
            fail_stalled_runs,
            deliver_webhooks_job,
            prune_dagster_history,
        ],
        schedules=[checks_schedule, retention_schedule],
        sensors=[
            build_source_sensor(PRINT_OS_SOURCE.name, process_print_os, print_os_interval_seconds),
            build_source_sensor(SCANNER_SOURCE.name, process_scanner, scanner_interval_seconds),
            build_webhook_sensor(webhook_interval_seconds),
            build_alert_sensor(alert_interval_seconds),
        ],
        resources={
            "jobmanager": PostgresDatabase(url=jobmanager_url),
            "logs": PostgresDatabase(url=logs_url),
            "processing": processing or ProcessingSettings(),
            "webhooks": webhooks or WebhookDelivery(),
            "alert_channels": alert_channels or AlertChannels(),
            "retention": retention or RetentionPolicy(),
            # In-process executor: frames stay in memory, nothing pickled per op.
            "io_manager": dg.mem_io_manager,
        },
        # Also for UI asset backfills (__ASSET_JOB): frames pass in memory between the ops.
        executor=dg.in_process_executor,
    )


def definitions_from_settings(
    settings: Settings,
    jobmanager_url: str | None = None,
    logs_url: str | None = None,
) -> dg.Definitions:
    """The code location for one ``Settings``: its values go into the resources once. Without
    URLs the database resources read them as EnvVars (the UI never shows a password)."""
    return build_definitions(
        jobmanager_url or dg.EnvVar(DATABASE_URL_VARIABLES["jobmanager_url"]),
        logs_url or dg.EnvVar(DATABASE_URL_VARIABLES["logs_url"]),
        settings.sensor_interval_seconds,
        settings.scanner_interval,
        ProcessingSettings.from_settings(settings),
        webhooks=WebhookDelivery(
            max_attempts=settings.webhook_max_attempts,
            backoff_seconds=settings.webhook_backoff_seconds,
            backoff_max_seconds=settings.webhook_backoff_max_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private,
        ),
        webhook_interval_seconds=settings.webhook_interval_seconds,
        alert_channels=alert_channels_from_settings(settings),
        alert_interval_seconds=settings.alert_interval_seconds,
        retention=RetentionPolicy(
            run_retention_days=settings.run_retention_days,
            failed_run_retention_days=settings.failed_run_retention_days,
        ),
    )


def alert_channels_from_settings(settings: Settings, *, secrets: bool = False) -> AlertChannels:
    """The alert channels; the secrets (a chat webhook URL holds a token) as EnvVars, so the UI
    never shows them, and only when set (an unset EnvVar fails the sensor's every tick).
    ``secrets``: their values instead, for use outside Dagster (`jobstatus watchdog`), where
    nothing resolves an EnvVar."""

    def secret(variable: str, value: SecretStr | None) -> str:
        if not value:
            return ""
        return value.get_secret_value() if secrets else dg.EnvVar(variable)

    return AlertChannels(
        webhook_url=secret("JOBSTATUS_ALERT_WEBHOOK_URL", settings.alert_webhook_url),
        webhook_format=settings.alert_webhook_format,
        smtp_host=settings.smtp_host or "",
        smtp_port=settings.smtp_port,
        smtp_starttls=settings.smtp_starttls,
        smtp_user=settings.smtp_user or "",
        smtp_password=secret("JOBSTATUS_SMTP_PASSWORD", settings.smtp_password),
        smtp_from=settings.smtp_from or "",
        smtp_to=settings.smtp_to or "",
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The environment is read here, once per code-location process."""
    return definitions_from_settings(load_settings())
