"""Settings from the environment (prefix ``JOBSTATUS_``); no URL set means the embedded server."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator may set. Read once per process, never at import time."""

    model_config = SettingsConfigDict(env_prefix="JOBSTATUS_", extra="ignore")

    jobmanager_url: str | None = Field(None, description="libpq URL of the jobmanager database")
    logs_url: str | None = Field(None, description="libpq URL of the logs database")
    dagster_url: str | None = Field(None, description="libpq URL of Dagster's own storage")
    home: Path = Field(
        Path(".jobstatus"), description="working folder: embedded data, DAGSTER_HOME"
    )

    file_customer: str = "Labex"
    chunk_size: int = Field(5000, ge=1, description="source rows per run (one window)")
    partition_width: int = Field(
        10_000, ge=1, description="markers per backfill partition (a run never crosses one)"
    )
    sensor_interval_seconds: int = Field(30, ge=1, description="print-OS sensor (and default)")
    scanner_interval_seconds: int | None = Field(None, ge=1, description="scanner sensor")
    late_row_lookback: int = Field(
        10_000, ge=0, description="markers below the marker re-checked for late commits (R19)"
    )
    sweep_rows: int = Field(
        10_000,
        ge=1,
        description="rows of the processed history re-checked per run, in marker order and"
        " round and round, for rows never processed (R19: any marker, even far below)",
    )
    retry_limit: int = Field(5, ge=1, description="attempts before a retryable failure gives up")
    retry_batch: int = Field(1000, ge=0, description="retryable failures re-tried per run")
    failure_age_hours: float = Field(24, gt=0, description="check: failures unresolved this long")
    max_marker_lag: int = Field(20_000, ge=0, description="check: rows allowed past a marker")
    retry_interval_seconds: int = Field(
        300, ge=0, description="wait between attempts of a retryable failure (R20)"
    )
    stale_run_seconds: int = Field(
        600,
        ge=1,
        description="an in-flight run with no live process known and no event this long is"
        " failed as stale, so it stops blocking its source",
    )

    # The integration API: who may read, and how webhooks are delivered.
    api_read_token: SecretStr | None = Field(
        None, description="bearer token of the API's reads (the write token also reads)"
    )
    api_public_reads: bool = Field(
        False, description="true: reads need no token (deliberately open to anyone)"
    )
    webhook_max_attempts: int = Field(
        30, ge=1, description="attempts of one webhook delivery before it is given up"
    )
    webhook_backoff_seconds: float = Field(
        2.0, gt=0, description="wait after a delivery's first failure, doubled at each failure"
    )
    webhook_backoff_max_seconds: float = Field(
        300.0, gt=0, description="longest wait between two attempts of one delivery"
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="one delivery's HTTP timeout")
    webhook_interval_seconds: int = Field(
        10, ge=1, description="how often the webhook sensor looks for due deliveries"
    )

    @field_validator("file_customer")
    @classmethod
    def _customer_has_no_separator(cls, value: str) -> str:
        # The file-id index expression splits on "_" (R4); a token with "_" would never match.
        if not value or "_" in value:
            raise ValueError("JOBSTATUS_FILE_CUSTOMER must be non-empty and contain no '_'")
        return value

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def uses_embedded(self) -> bool:
        return not (self.jobmanager_url and self.logs_url and self.dagster_url)


def load_settings() -> Settings:
    return Settings()
