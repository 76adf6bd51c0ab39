"""The one configuration: typed, read from the environment (prefix ``JOBSTATUS_``) once per process.

``Processing`` holds what runs and sensors read; the Dagster resource ``ProcessingSettings`` carries
exactly these values. ``Settings`` adds where the databases are, the working folder and the API
token. No database URL set means the embedded server; some but not all set is an error where the
embedded server would start.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Field name → the environment variable an operator sets.
DATABASE_URL_VARIABLES = {
    "jobmanager_url": "JOBSTATUS_JOBMANAGER_URL",
    "logs_url": "JOBSTATUS_LOGS_URL",
    "dagster_url": "JOBSTATUS_DAGSTER_URL",
}


class ConfigurationError(ValueError):
    """Settings that cannot be run as given; the message names what to set."""


class Processing(BaseModel):
    """What processing reads: window sizes, cadence, retries and the checks' thresholds."""

    file_customer: str = "Labex"
    chunk_size: int = Field(5000, ge=1, description="source rows per run (one window)")
    partition_width: int = Field(
        10_000, ge=1, description="markers per backfill partition (a run never crosses one)"
    )
    sensor_interval_seconds: int = Field(30, ge=1, description="print-OS sensor (and default)")
    scanner_interval_seconds: int | None = Field(None, ge=1, description="scanner sensor")
    late_row_lookback: int = Field(
        10_000, ge=0, description="markers below the marker re-checked for rows committed late"
    )
    sweep_rows: int = Field(
        10_000,
        ge=1,
        description="rows of the processed history re-checked per run, in marker order and"
        " round and round, for rows never processed, however far below the marker",
    )
    retry_limit: int = Field(5, ge=1, description="attempts before a retryable failure gives up")
    retry_batch: int = Field(1000, ge=0, description="retryable failures re-tried per run")
    failure_age_hours: float = Field(24, gt=0, description="check: failures unresolved this long")
    max_marker_lag: int = Field(20_000, ge=0, description="check: rows allowed past a marker")
    retry_interval_seconds: int = Field(
        300, ge=0, description="wait between attempts of a retryable failure"
    )
    stale_run_seconds: int = Field(
        600,
        ge=1,
        description="an in-flight run with no live process known and no event this long is"
        " failed as stale, so it stops blocking its source",
    )

    @field_validator("file_customer")
    @classmethod
    def _customer_has_no_separator(cls, value: str) -> str:
        # The file-id index expression splits on "_" (R4); a token with "_" would never match.
        if not value or "_" in value:
            raise ValueError("JOBSTATUS_FILE_CUSTOMER must be non-empty and contain no '_'")
        return value

    @property
    def scanner_interval(self) -> int:
        """The scanner sensor's interval: its own setting, else the print-OS one."""
        return self.scanner_interval_seconds or self.sensor_interval_seconds

    def processing_values(self) -> dict[str, object]:
        """The processing values alone (what the Dagster resource carries)."""
        return {name: getattr(self, name) for name in Processing.model_fields}


class Settings(Processing, BaseSettings):
    """Everything an operator may set. Built once per process (``load_settings``), then passed."""

    model_config = SettingsConfigDict(
        env_prefix="JOBSTATUS_", extra="ignore", env_ignore_empty=True, populate_by_name=True
    )

    jobmanager_url: str | None = Field(None, description="libpq URL of the jobmanager database")
    logs_url: str | None = Field(None, description="libpq URL of the logs database")
    dagster_url: str | None = Field(None, description="libpq URL of Dagster's own storage")
    home: Path = Field(
        Path(".jobstatus"), description="working folder: embedded data, DAGSTER_HOME"
    )
    dagster_home: Path | None = Field(
        None,
        validation_alias=AliasChoices("dagster_home", "DAGSTER_HOME"),
        description="Dagster's home when the operator keeps one; else one under `home`",
    )
    # The production topology (deploy/): one code server, the webserver and the daemon load the
    # code location from it; the UI answers only requests addressed to its own name.
    code_server_host: str = Field(
        "127.0.0.1", description="address of `jobstatus serve code-server`"
    )
    code_server_port: int = Field(4266, ge=1, le=65535, description="its port")
    ui_hosts: str = Field(
        "",
        description="Host names (comma-separated, `name[:port]` as browsers send them) the Dagster"
        " UI answers besides 127.0.0.1/localhost on its own port: the reverse proxy's public name",
    )
    api_token: SecretStr | None = Field(None, description="bearer token of the API's writes")
    # The integration API: who may read, and how webhooks are delivered.
    api_read_token: SecretStr | None = Field(
        None, description="bearer token of the API's reads (the write token also reads)"
    )
    api_public_reads: bool = Field(
        False, description="true: reads need no token (deliberately open to anyone)"
    )
    webhook_max_attempts: int = Field(
        40, ge=1, description="attempts of one webhook delivery before it is given up"
    )
    webhook_backoff_seconds: float = Field(
        2.0, gt=0, description="wait after a delivery's first failure, doubled at each failure"
    )
    webhook_backoff_max_seconds: float = Field(
        3600.0, gt=0, description="longest wait between two attempts of one delivery"
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="one delivery attempt, all of it: connect, send, answer"
    )
    webhook_interval_seconds: int = Field(
        10, ge=1, description="how often the webhook sensor looks for due deliveries"
    )
    webhook_allow_private: bool = Field(
        False,
        description="true: loopback, private and link-local webhook targets are allowed"
        " (tests, the demo, `jobstatus dev`); never on a server others can subscribe on",
    )
    webhook_secret_overlap_seconds: float = Field(
        86_400.0,
        ge=0,
        description="after a secret rotation, how long the replaced secret still signs",
    )
    # Alerts (pipeline/alerts.py): where an incident's opening and clearing are sent. Either, both
    # or neither (then incidents are still recorded in alert_incidents and shown by the sensor).
    alert_webhook_url: SecretStr | None = Field(
        None, description="POST each alert as JSON with a `text` field (Slack, any receiver)"
    )
    alert_webhook_format: Literal["slack", "teams"] = Field(
        "slack",
        description="`teams`: also an Adaptive Card in `attachments`, as a Teams Workflows"
        " webhook wants (it shows no `text`)",
    )
    smtp_host: str | None = Field(None, description="mail each alert through this SMTP server")
    smtp_port: int = Field(25, ge=1, description="the SMTP server's port")
    smtp_starttls: bool = Field(False, description="STARTTLS before logging in")
    smtp_user: str | None = Field(None, description="SMTP login, if the server wants one")
    smtp_password: SecretStr | None = Field(None, description="SMTP password")
    smtp_from: str | None = Field(None, description="sender of the alert mails")
    smtp_to: str | None = Field(None, description="recipients of the alert mails, comma-separated")
    alert_interval_seconds: int = Field(30, ge=5, description="how often the alert sensor looks")
    # Retention (pipeline/retention.py): Dagster keeps every run forever unless told.
    run_retention_days: int = Field(
        30, ge=1, description="successful runs older than this are deleted (not our own tables)"
    )
    failed_run_retention_days: int = Field(
        180, ge=1, description="failed and canceled runs, and backfills' runs, are kept this long"
    )

    def configured_database_urls(self) -> tuple[str, str, str] | None:
        """The three URLs, or None for the embedded server. Some but not all set is an error:
        a half-configured host must not quietly process against a private embedded server."""
        values = {env: getattr(self, name) for name, env in DATABASE_URL_VARIABLES.items()}
        missing = [env for env, value in values.items() if not value]
        if not missing:
            return tuple(values.values())
        if len(missing) == len(values):
            return None
        given = [env for env in values if env not in missing]
        raise ConfigurationError(
            f"{_listed(missing)} not set but {_listed(given)} set: set all three database URLs,"
            " or none of them for the embedded server"
        )

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()


def _listed(names: list[str]) -> str:
    return f"{names[0]} is" if len(names) == 1 else f"{' and '.join(names)} are"


def load_settings() -> Settings:
    """Read the environment: the only place that does (once per process, never at import)."""
    return Settings()
