"""The wheel ships the product only: ``jobstatus_dagster`` and its subpackages, never the tests."""

import tomllib
from pathlib import Path

from setuptools import find_packages

PROJECT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_the_package_and_its_subpackages_only() -> None:
    """The same discovery setuptools runs when it builds the wheel, on the real tree."""
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = set(find_packages(where=str(PROJECT), include=find["include"]))

    assert not {p for p in packages if p.split(".")[0] != "jobstatus_dagster"}, packages
    on_disk = {
        ".".join(init.parent.relative_to(PROJECT).parts)
        for init in (PROJECT / "jobstatus_dagster").rglob("__init__.py")
    }
    assert packages == on_disk
