"""Dagster resources: the two shop databases and the processing settings."""

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from jobstatus_dagster.config import Processing, Settings
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
        if self._engine is None:  # used outside a run (the API, the CLI, scripts)
            # Outside a run an EnvVar is not resolved for us: it is still the variable's name.
            url = self.url.get_value() if isinstance(self.url, dg.EnvVar) else self.url
            if not url:
                raise ValueError(f"{self.url} is not set")
            self._engine = make_engine(url)
        return self._engine


class ProcessingSettings(dg.ConfigurableResource, Processing):
    """The processing values of the one ``Settings``, carried by the resource (shown in the UI,
    never re-read from the environment). Unset fields keep their documented defaults."""

    @classmethod
    def from_settings(cls, settings: Settings) -> "ProcessingSettings":
        return cls(**settings.processing_values())

    def resolved(self) -> Processing:
        """The values runs and sensors read (kept under this name for its many callers)."""
        return self
