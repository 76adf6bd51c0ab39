"""The Dagster instance's one configuration is dagster.yaml: `jobstatus` copies it into
DAGSTER_HOME for the webserver and the daemon, and instances built in code (tests, benchmarks,
the fault suite) read the same file with their own storage."""

from pathlib import Path
from typing import Any

import yaml

from jobstatus_dagster.db import to_sqlalchemy_url

DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"


def instance_overrides(dagster_url: str) -> dict[str, Any]:
    """dagster.yaml with its storage pointed at ``dagster_url`` (psycopg2: see db.py)."""
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    storage_url = to_sqlalchemy_url(dagster_url, "psycopg2")
    settings["storage"] = {"postgres": {"postgres_url": storage_url}}
    return settings
