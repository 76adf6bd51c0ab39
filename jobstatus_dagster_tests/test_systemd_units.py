"""deploy/systemd and deploy/jobstatus.env as shipped: each unit starts a `jobstatus` command that
exists, with options it accepts; every variable the units, the Caddyfile and the code read is
defined where the operator sets it; the environment file means the same to systemd and to the
shell the README sources it in; and, where this machine has it, `systemd-analyze verify` accepts
the units (Caddy's drop-in included)."""

import itertools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from click.testing import CliRunner

from jobstatus_dagster.cli import main
from jobstatus_dagster.config import Settings
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.instance import DAGSTER_YAML, DEPLOY_DIR

PROJECT = Path(__file__).resolve().parent.parent
SYSTEMD = DEPLOY_DIR / "systemd"
ENV_FILE = DEPLOY_DIR / "jobstatus.env"
# Where README "Install" puts the venv and the environment file.
INSTALLED_JOBSTATUS = "/opt/jobstatus/venv/bin/jobstatus"
INSTALLED_ENV_FILE = "/etc/jobstatus/jobstatus.env"
SERVICES = sorted(SYSTEMD.glob("jobstatus*.service"))
# Run by its timer, outside jobstatus.target: stopping the services is what it must report.
WATCHDOG = SYSTEMD / "jobstatus-watchdog.service"
# Set by `jobstatus` itself for the Dagster processes it becomes (db.DatabaseUrls.export,
# cli.Environment), never by the operator.
SET_BY_JOBSTATUS = {"JOBSTATUS_DAGSTER_STORAGE_URL", "DAGSTER_HOME"}


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as systemd reads it: sections of (key, value) lines, keys repeatable."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in unit(path).get(section, []) if k == key]


def env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(variables set, as systemd's EnvironmentFile= reads them: one pair of outer quotes
    removed; variables documented at their default, `#NAME=value`)."""
    assigned, documented = {}, set()
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"#([A-Z][A-Z0-9_]*)=.*", line):
            documented.add(match[1])
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        assigned[name.strip()] = value
    return assigned, documented


def variables_the_code_reads() -> set[str]:
    """Every setting (config.Settings: prefix and field name), but DAGSTER_HOME (jobstatus
    derives it from JOBSTATUS_HOME)."""
    prefix = Settings.model_config["env_prefix"]
    return {
        f"{prefix}{name.upper()}"
        for name, field in Settings.model_fields.items()
        if field.validation_alias is None
    }


def test_each_unit_starts_a_jobstatus_command_that_exists() -> None:
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(SERVICES) == 6 and WATCHDOG in SERVICES, SERVICES
    for path in SERVICES:
        (exec_start,) = values(path, "Service", "ExecStart")
        argv = shlex.split(exec_start)
        assert argv[0] == INSTALLED_JOBSTATUS and Path(argv[0]).name in scripts, path.name
        # The command and every option as the unit gives them: an unknown one exits 2.
        shown = CliRunner().invoke(main, [*argv[1:], "--help"])
        assert shown.exit_code == 0, (path.name, shown.output)
        words = [a for a in itertools.takewhile(lambda a: not a.startswith("-"), argv[1:])]
        assert f"Usage: main {' '.join(words)} [OPTIONS]" in shown.output, shown.output
        assert values(path, "Service", "EnvironmentFile") == [INSTALLED_ENV_FILE], path.name
        # The database passwords: a credential, and libpq pointed at it.
        assert values(path, "Service", "LoadCredential") == ["pgpass:/etc/jobstatus/pgpass"]
        assert "PGPASSFILE=%d/pgpass" in values(path, "Service", "Environment")
        if path == WATCHDOG:
            assert values(path, "Service", "Type") == ["oneshot"]
            assert not values(path, "Unit", "PartOf") and not values(path, "Install", "WantedBy")
            continue
        assert values(path, "Unit", "PartOf") == ["jobstatus.target"], path.name
        assert values(path, "Install", "WantedBy") == ["jobstatus.target"], path.name
    (wants,) = values(SYSTEMD / "jobstatus.target", "Unit", "Wants")
    assert sorted(wants.split()) == [p.name for p in SERVICES if p != WATCHDOG]
    timer = SYSTEMD / "jobstatus-watchdog.timer"
    assert values(timer, "Timer", "OnUnitActiveSec") == ["1min"]
    # A grace from the timer's start (a fresh `enable --now` with the services, or a boot):
    # OnBootSec, long past on an installed host, would elapse at once (a false down/cleared).
    assert values(timer, "Timer", "OnActiveSec") == ["3min"]
    assert not values(timer, "Timer", "OnBootSec")
    assert values(timer, "Install", "WantedBy") == ["timers.target"]

    # Caddy sends each site to the port its unit serves on (deploy/Caddyfile's defaults).
    caddyfile = (DEPLOY_DIR / "Caddyfile").read_text()
    for service, upstream in (
        ("jobstatus-webserver.service", "JOBSTATUS_UI_UPSTREAM"),
        ("jobstatus-webserver-viewer.service", "JOBSTATUS_UI_VIEW_UPSTREAM"),
        ("jobstatus-api.service", "JOBSTATUS_API_UPSTREAM"),
    ):
        argv = shlex.split(values(SYSTEMD / service, "Service", "ExecStart")[0])
        address = f"{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}"
        assert f"{{${upstream}:{address}}}" in caddyfile, (service, address)

    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze:  # not on every machine: the checks above hold without it
        _verify(Path(systemd_analyze))


def _verify(systemd_analyze: Path) -> None:
    """`systemd-analyze verify` on copies of the units whose ExecStart names this venv's
    `jobstatus` (verify checks that the command exists), and on a stand-in caddy.service with
    the shipped drop-in. Unknown keys and bad values are warnings: none may be printed."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        units = Path(folder)
        jobstatus = str(Path(sys.executable).with_name("jobstatus"))
        for path in [*SERVICES, SYSTEMD / "jobstatus.target", SYSTEMD / "jobstatus-watchdog.timer"]:
            text = path.read_text().replace(INSTALLED_JOBSTATUS, jobstatus)
            (units / path.name).write_text(text)
        caddy = str(Path(sys.executable).with_name("caddy"))
        (units / "caddy.service").write_text(
            f"[Unit]\nDescription=Caddy\n[Service]\nExecStart={caddy} run --environ"
            " --config /etc/caddy/Caddyfile\n"
        )
        (units / "caddy.service.d").mkdir()
        shutil.copy(SYSTEMD / "caddy-jobstatus.conf", units / "caddy.service.d" / "jobstatus.conf")
        verified = subprocess.run(
            [
                str(systemd_analyze),
                "verify",
                "--man=no",
                *map(str, sorted(p for p in units.glob("*.*") if p.is_file())),
            ],
            env={"PATH": "/usr/bin:/bin", "SYSTEMD_UNIT_PATH": f"{units}:"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == "" and verified.stdout.strip() == "", verified.stderr


def test_every_variable_read_is_defined_where_the_operator_sets_it() -> None:
    assigned, documented = env_file(ENV_FILE)
    in_file = set(assigned) | documented
    reads = variables_the_code_reads()
    # Every setting is in the one environment file, set or at its documented default ...
    assert sorted(reads - in_file) == []
    # ... and the file holds nothing the code would ignore (a typo is a silent default).
    assert sorted(in_file - reads) == []
    assert not set(assigned) & documented
    # What a production service refuses to start without, and where systemd keeps its state.
    for name in ("JOBSTATUS_JOBMANAGER_URL", "JOBSTATUS_LOGS_URL", "JOBSTATUS_DAGSTER_URL"):
        assert (
            assigned[name].startswith("postgresql://") and "sslmode=verify-full" in (assigned[name])
        )
    for path in SERVICES:
        state = "/var/lib/" + values(path, "Service", "StateDirectory")[0]
        assert (
            values(path, "Service", "WorkingDirectory") == [state] == [assigned["JOBSTATUS_HOME"]]
        )
        # A variable a unit expands is defined for it.
        own = {v.split("=", 1)[0] for v in values(path, "Service", "Environment")}
        for _, value in unit(path)["Service"]:
            for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", value):
                assert name in set(assigned) | own, (path.name, name)

    # dagster.yaml reads only what jobstatus sets for the Dagster processes, which it does.
    reads_of_dagster_yaml = set(re.findall(r"env: (\w+)", DAGSTER_YAML.read_text()))
    assert reads_of_dagster_yaml and reads_of_dagster_yaml <= SET_BY_JOBSTATUS
    import os

    before = dict(os.environ)
    try:
        DatabaseUrls("postgresql://a@/j", "postgresql://a@/l", "postgresql://a@/d").export()
        assert reads_of_dagster_yaml <= set(os.environ)
    finally:
        os.environ.clear()
        os.environ.update(before)

    # The Caddyfile's variables without a default: set by Caddy's drop-in, or (the login
    # hashes) in the file the drop-in loads, which its comment names.
    drop_in = SYSTEMD / "caddy-jobstatus.conf"
    caddy_set = {v.split("=", 1)[0] for v in values(drop_in, "Service", "Environment")}
    assert values(drop_in, "Service", "EnvironmentFile") == ["/etc/caddy/jobstatus-logins.env"]
    caddy_reads = set(re.findall(r"\{\$([A-Z_]+)\}", (DEPLOY_DIR / "Caddyfile").read_text()))
    for name in caddy_reads - caddy_set:
        assert f"{name}=" in drop_in.read_text(), name


def test_the_environment_file_means_the_same_to_systemd_and_to_a_shell(tmp_path) -> None:
    """README's by-hand commands source it (`set -a; . /etc/jobstatus/jobstatus.env`): an
    unquoted `&` in a URL would end the assignment there in a shell, not in systemd."""
    assigned, _ = env_file(ENV_FILE)
    sourced = subprocess.run(
        ["sh", "-c", f"set -a; . {shlex.quote(str(ENV_FILE))}; env -0"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd=tmp_path,
    )
    shell = dict(pair.split("=", 1) for pair in sourced.stdout.split("\0") if "=" in pair)
    assert sourced.stderr == ""
    assert {name: shell.get(name) for name in assigned} == assigned
