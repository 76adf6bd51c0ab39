"""Dagster resources: the two shop databases and the processing settings."""

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from jobstatus_dagster.config import Settings, load_settings
from jobstatus_dagster.db import make_engine


class PostgresDatabase(dg.ConfigurableResource):
    """One Postgres database by libpq URL; the engine lives for one run or sensor tick."""

    url: str
    _engine: sa.Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._engine = make_engine(self.url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:  # used outside a run (direct instantiation in scripts)
            self._engine = make_engine(self.url)
        return self._engine


class ProcessingSettings(dg.ConfigurableResource):
    """Tuning knobs; unset fields fall back to the JOBSTATUS_* environment at run time."""

    chunk_size: int | None = None
    partition_width: int | None = None
    late_row_lookback: int | None = None
    sweep_rows: int | None = None
    retry_limit: int | None = None
    retry_batch: int | None = None
    retry_interval_seconds: int | None = None
    file_customer: str | None = None
    failure_age_hours: float | None = None
    max_marker_lag: int | None = None

    def resolved(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump().items() if v is not None}
        return load_settings().model_copy(update=overrides)
