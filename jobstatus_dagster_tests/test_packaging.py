"""The wheel ships the product only (``jobstatus_dagster``, its subpackages and its package data:
the migrations, the Dagster instance template and the deploy/ files), never the tests; installed
from the wheel, away from the checkout, `jobstatus` migrates, processes and writes out the
deploy/ files."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import sqlalchemy as sa
from setuptools import find_namespace_packages

from jobstatus_dagster.db import SQL_DIR, to_sqlalchemy_url
from jobstatus_dagster.instance import DAGSTER_YAML, DEPLOY_DIR, WORKSPACE_YAML
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.databases import fresh_urls

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


def _distribution(requirement: str) -> str:
    """The normalised name of a requirement (``psycopg[binary]>=3.2`` → ``psycopg``)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return canonicalize_name(Requirement(requirement).name)


def _runtime_closure(names: set[str]) -> set[str]:
    """The distributions installing ``names`` brings (their own dependencies, not extras')."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_distribution(line))
    return seen


def test_everything_the_package_imports_is_installed_by_its_own_dependencies() -> None:
    """The wheel test borrows this venv's site-packages, which the dev extra fills too: a
    module imported by the product but declared only for the tests (hypothesis, standardwebhooks,
    setuptools…) would pass there and fail at a shop. Every third-party module the package
    imports must come from a distribution that its runtime dependencies install."""
    import ast
    from importlib import metadata

    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    runtime = _runtime_closure({_distribution(r) for r in config["project"]["dependencies"]})
    providers = metadata.packages_distributions()
    stdlib = sys.stdlib_module_names
    missing = {}
    for source in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top == "jobstatus_dagster" or top == "__future__":
                    continue
                dists = {_distribution(d) for d in providers.get(top, [])}
                if not dists & runtime:
                    missing.setdefault(top, []).append(str(source.relative_to(PROJECT)))
    assert not missing, f"imported but not installed by [project] dependencies: {missing}"


def test_the_package_reads_its_migrations_and_instance_template_from_itself() -> None:
    """Package data, not files beside the checkout: what the wheel carries is what runs."""
    for path in (SQL_DIR, DAGSTER_YAML, WORKSPACE_YAML):
        assert path.is_relative_to(PACKAGE) and path.exists(), path
    for folder in ("jobmanager", "logs", "baseline/jobmanager", "baseline/logs"):
        assert list((SQL_DIR / folder).glob("*.sql")), folder
        assert not (SQL_DIR / folder / "__init__.py").exists()  # data, not a package


# ----- the wheel, installed outside the checkout ---------------------------------------------


def _build_wheel(tmp: Path) -> Path:
    """``pip wheel`` of a copy of what the wheel is built from (the build writes build/ and
    *.egg-info beside its sources: never in a checkout others run tests in).

    Offline when this interpreter's setuptools builds wheels by itself (>= 70.1, as the dev extra
    asks): no build isolation then. Else pip's build isolation fetches the build backend
    pyproject.toml declares from pip's configured index."""
    source = tmp / "source"
    source.mkdir()
    shutil.copy(PROJECT / "pyproject.toml", source)
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    offline = importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
    dist = tmp / "dist"
    isolation = ["--no-build-isolation", "--no-index"] if offline else []
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(dist), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("jobstatus-*.whl")
    return wheel


def _venv_with(wheel: Path, venv: Path) -> Path:
    """A new venv holding the wheel alone; the dependencies come from this interpreter's
    site-packages through a .pth line (a path only: that folder's own .pth files, among them the
    checkout's editable install, are not run, so the checkout stays out of reach). That the
    runtime dependencies suffice is the import test's above (no download of ~100 wheels here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    command = [sys.executable, "-m", "venv", "--without-pip", str(venv)]
    subprocess.run(command, env=env, check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", str(wheel)],
        env=env,
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parent = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (Path(purelib) / "parent_venv.pth").write_text("".join(f"{p}\n" for p in sorted(parent)))
    return venv / "bin"


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(to_sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            return set(conn.execute(sa.text(query)).scalars())
    finally:
        engine.dispose()


def test_the_wheel_installs_outside_the_checkout_and_migrates_and_processes(
    pg_admin_uri, tmp_path
) -> None:
    wheel = _build_wheel(tmp_path)
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"jobstatus_dagster", "jobstatus-0.1.0.dist-info"}, tops
    bin_dir = _venv_with(wheel, tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"  # the working folder: no checkout in sight
    elsewhere.mkdir()
    urls = fresh_urls(pg_admin_uri, "wheel")
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JOBSTATUS_", "PYTHON", "DAGSTER_"))
        },
        "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
        "JOBSTATUS_LOGS_URL": urls.logs,
        "JOBSTATUS_DAGSTER_URL": urls.dagster,
        "JOBSTATUS_HOME": str(elsewhere / "home"),
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )

    where = run(
        str(bin_dir / "python"),
        "-c",
        "import importlib.util, jobstatus_dagster; print(jobstatus_dagster.__file__);"
        " print(importlib.util.find_spec('jobstatus_testkit'))",
    )
    assert where.returncode == 0, where.stderr[-3000:]
    module, testkit = where.stdout.split()
    installed = Path(module).parent
    assert installed.is_relative_to(tmp_path / "venv"), module
    assert testkit == "None"  # the checkout's support package is out of reach

    jobstatus = str(bin_dir / "jobstatus")
    migrated = run(jobstatus, "migrate", "--baseline")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    # Every migration of the checkout is in the wheel, and applied, after the baseline.
    for database in ("jobmanager", "logs"):
        ids = sorted(f.stem for f in (installed / "sql" / database).glob("*.sql"))
        assert ids == sorted(f.stem for f in (SQL_DIR / database).glob("*.sql"))
        # a .rollback.sql (in the wheel too) undoes its migration: never applied by migrate
        migrations = [i for i in ids if not i.endswith(".rollback")]
        applied = ", ".join([f"0000_baseline_{database}", *migrations])
        assert f"{database}: {applied}" in migrated.stdout.splitlines(), migrated.stdout
    # The Dagster instance template came from the installed package.
    copied = elsewhere / "home" / "dagster_home" / "dagster.yaml"
    assert (
        copied.read_text() == (installed / "dagster.yaml").read_text() == DAGSTER_YAML.read_text()
    )

    assert {"jobs", "processing_markers", "job_status_updates", "processing_failures"} <= _tables(
        urls.jobmanager
    )
    assert {"job_operations", "operation_codes"} <= _tables(urls.logs)

    with Shop(urls) as shop:
        job = shop.add_job("9001_1")
        shop.add_job_operation(job, "1")
        shop.map_files("W-I1", ["FILE_1_Labex_9001_1_1"])
        _, marker = shop.print_event("W-I1", "PRINTED")
        processed = run(jobstatus, "process", "--source", "print_os")
        assert processed.returncode == 0, processed.stderr[-3000:]
        assert processed.stdout.startswith("print_os: "), processed.stdout
        assert shop.marker("print_os") == marker
        row = shop.job_print_row(job, "1")
        assert (row["status"], row["notes"]) == ("completed", "1 of 1 files printed")
        assert shop.job_operations_json(job) == {"print": True}

    # What the operator installs beside the package (README "Install"), from the wheel alone.
    def deploy_files(folder: Path) -> dict[str, bytes]:
        return {
            str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()
        }

    shipped = deploy_files(DEPLOY_DIR)
    assert {
        "systemd/jobstatus-code-server.service",
        "systemd/jobstatus-daemon.service",
        "systemd/jobstatus-webserver.service",
        "systemd/jobstatus-webserver-viewer.service",
        "systemd/jobstatus-api.service",
        "systemd/jobstatus.target",
        "systemd/caddy-jobstatus.conf",
        "jobstatus.env",
        "Caddyfile",
        "grants.sql",
    } <= set(shipped)
    assert deploy_files(installed / "deploy") == shipped
    written = run(jobstatus, "deploy-files", str(elsewhere / "deploy"))
    assert written.returncode == 0, written.stderr[-3000:]
    assert deploy_files(elsewhere / "deploy") == shipped
    assert len(written.stdout.splitlines()) == len(shipped)
    # An edited copy is never overwritten unless asked.
    edited = elsewhere / "deploy" / "jobstatus.env"
    edited.write_text("JOBSTATUS_FILE_CUSTOMER=Shop\n")
    refused = run(jobstatus, "deploy-files", str(elsewhere / "deploy"))
    assert refused.returncode == 1 and "jobstatus.env" in refused.stderr, refused.stderr
    assert edited.read_text() == "JOBSTATUS_FILE_CUSTOMER=Shop\n"
    forced = run(jobstatus, "deploy-files", "--force", str(elsewhere / "deploy"))
    assert forced.returncode == 0 and deploy_files(elsewhere / "deploy") == shipped


def test_the_checkouts_top_level_sql_and_dagster_files_are_the_packages() -> None:
    """sql/, dagster.yaml, workspace.yaml and deploy/ at the top of the checkout are links to
    the package's files, so there is one copy of each (the wheel ships the package's)."""
    from jobstatus_dagster.db import SQL_DIR
    from jobstatus_dagster.instance import DAGSTER_YAML, DEPLOY_DIR, WORKSPACE_YAML

    top = Path(__file__).resolve().parent.parent
    for name, packaged in (
        ("sql", SQL_DIR),
        ("dagster.yaml", DAGSTER_YAML),
        ("workspace.yaml", WORKSPACE_YAML),
        ("deploy", DEPLOY_DIR),
    ):
        assert (top / name).resolve() == Path(str(packaged)).resolve(), name
