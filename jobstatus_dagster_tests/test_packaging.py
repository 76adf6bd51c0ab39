"""The wheel ships the product only (``jobstatus_dagster``, its subpackages and its package data:
the migrations and the Dagster instance template), never the tests."""

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages

from jobstatus_dagster.db import SQL_DIR
from jobstatus_dagster.instance import DAGSTER_YAML, WORKSPACE_YAML

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "jobstatus_dagster"


def test_the_wheel_holds_the_package_and_its_subpackages_only() -> None:
    """The same discovery setuptools runs when it builds the wheel (pyproject.toml's
    ``packages.find``: namespace packages included), on the real tree."""
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = set(find_namespace_packages(where=str(PROJECT), include=find["include"]))

    assert not {p for p in packages if p.split(".")[0] != "jobstatus_dagster"}, packages
    on_disk = {
        ".".join(init.parent.relative_to(PROJECT).parts) for init in PACKAGE.rglob("__init__.py")
    }
    # Folders without __init__.py (the migrations) are found too, as data: they hold no code.
    with_code = {p for p in packages if any((PROJECT / p.replace(".", "/")).glob("*.py"))}
    assert with_code == on_disk


def test_the_package_reads_its_migrations_and_instance_template_from_itself() -> None:
    """Package data, not files beside the checkout: what the wheel carries is what runs."""
    for path in (SQL_DIR, DAGSTER_YAML, WORKSPACE_YAML):
        assert path.is_relative_to(PACKAGE) and path.exists(), path
    for folder in ("jobmanager", "logs", "baseline/jobmanager", "baseline/logs"):
        assert list((SQL_DIR / folder).glob("*.sql")), folder
        assert not (SQL_DIR / folder / "__init__.py").exists()  # data, not a package
