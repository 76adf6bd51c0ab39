"""The Dagster instance's one configuration is dagster.yaml, package data beside this module:
`jobstatus` copies it into DAGSTER_HOME for the webserver and the daemon, and instances built in
code (tests, benchmarks, the fault suite) read the same file with their own storage."""

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from jobstatus_dagster.db import to_sqlalchemy_url

# Package data (pyproject.toml): in the wheel as in the checkout.
PACKAGE_DIR = Path(resources.files("jobstatus_dagster"))
DAGSTER_YAML = PACKAGE_DIR / "dagster.yaml"
# The code location `jobstatus dev` serves (by module name: valid wherever the package imports).
WORKSPACE_YAML = PACKAGE_DIR / "workspace.yaml"


def instance_overrides(dagster_url: str) -> dict[str, Any]:
    """dagster.yaml with its storage pointed at ``dagster_url`` (psycopg2: see db.py)."""
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    storage_url = to_sqlalchemy_url(dagster_url, "psycopg2")
    settings["storage"] = {"postgres": {"postgres_url": storage_url}}
    return settings
