"""One configuration, read once: a partial set of database URLs is refused, runs keep the values
the definitions were built with, and every processing value travels in the Dagster resource."""

from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from jobstatus_dagster.cli import main
from jobstatus_dagster.config import DATABASE_URL_VARIABLES
from jobstatus_dagster.definitions import defs
from jobstatus_dagster.pipeline.resources import ProcessingSettings

URL_VARIABLES = tuple(DATABASE_URL_VARIABLES.values())
PARTIAL_SETS = [
    tuple(v for v in URL_VARIABLES if v not in missing)
    for missing in [(v,) for v in URL_VARIABLES]
    + [tuple(v for v in URL_VARIABLES if v != kept) for kept in URL_VARIABLES]
]


@pytest.mark.parametrize("given", PARTIAL_SETS, ids=lambda g: "+".join(v.split("_")[1] for v in g))
def test_a_partial_set_of_database_urls_is_an_error_naming_what_is_missing(
    given: tuple[str, ...], tmp_path: Path
) -> None:
    """A half-configured host must not process against a private embedded server."""
    home = tmp_path / "home"
    env = {v: ("postgresql://shop.example/db" if v in given else None) for v in URL_VARIABLES}
    env |= {"JOBSTATUS_HOME": str(home), "DAGSTER_HOME": None}
    result = CliRunner().invoke(main, ["migrate"], env=env)

    assert result.exit_code == 1, result.output
    missing = [v for v in URL_VARIABLES if v not in given]
    first_line = result.output.strip().splitlines()[-1]
    for variable in missing:
        assert f"{variable}" in first_line
    assert "not set" in first_line
    assert not (home / "pgdata").exists()  # no embedded server was started
    assert not home.exists()


def test_settings_are_read_once_when_the_definitions_load(monkeypatch) -> None:
    """Changing the environment after the definitions loaded does not change what a run reads."""
    monkeypatch.setenv("JOBSTATUS_CHUNK_SIZE", "7")
    monkeypatch.setenv("JOBSTATUS_STALE_RUN_SECONDS", "42")
    monkeypatch.setenv("JOBSTATUS_SCANNER_INTERVAL_SECONDS", "11")
    loaded = defs()
    monkeypatch.setenv("JOBSTATUS_CHUNK_SIZE", "9")
    monkeypatch.setenv("JOBSTATUS_STALE_RUN_SECONDS", "99")

    seen: dict[str, int] = {}

    @dg.asset
    def probe(processing: ProcessingSettings) -> None:
        settings = processing.resolved()
        seen.update(
            chunk_size=settings.chunk_size,
            stale=settings.stale_run_seconds,
            scanner_interval=settings.scanner_interval,
        )

    result = dg.materialize([probe], resources={"processing": loaded.resources["processing"]})
    assert result.success
    assert seen == {"chunk_size": 7, "stale": 42, "scanner_interval": 11}


def test_stale_run_seconds_is_carried_by_the_resource() -> None:
    """Every processing value, stale_run_seconds included, is a field of the resource."""
    processing = ProcessingSettings(stale_run_seconds=5, chunk_size=3)
    assert processing.resolved().stale_run_seconds == 5
    assert processing.resolved().chunk_size == 3
    assert ProcessingSettings().resolved().stale_run_seconds == 600


def test_a_bad_value_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {"JOBSTATUS_HOME": str(tmp_path / "home"), "JOBSTATUS_CHUNK_SIZE": "0"}
    env |= {v: None for v in URL_VARIABLES}
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 1
    assert "chunk_size" in result.output
    assert not (tmp_path / "home").exists()
