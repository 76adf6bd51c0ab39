"""The `jobstatus` command: set up, demo, process, inspect, and run everything."""

import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click
from pydantic import ValidationError

from jobstatus_dagster.config import (
    DATABASE_URL_VARIABLES,
    ConfigurationError,
    Settings,
    load_settings,
)
from jobstatus_dagster.db import MigrationsNotFound, engine_scope, migrate, resolve_urls
from jobstatus_dagster.instance import (
    DAGSTER_YAML,
    DEPLOY_DIR,
    grpc_workspace,
    write_atomically,
)
from jobstatus_dagster.processes import (
    interrupt_on_stop_signals,
    process_group,
    stop_when_parent_exits,
)
from jobstatus_dagster.source import SOURCE_NAMES


class Environment:
    """The settings, databases (embedded or configured) and Dagster home of one CLI invocation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.urls, self._server = resolve_urls(settings)
        self.urls.export()
        self.dagster_home = self._prepare_dagster_home()

    def _prepare_dagster_home(self) -> Path:
        """DAGSTER_HOME as set by the operator, else a folder under the working folder."""
        home = self.settings.dagster_home
        if home is None:
            home = self.settings.home_dir / "dagster_home"
            # Through a rename: the services of a host start together and read it at once.
            write_atomically(home / "dagster.yaml", DAGSTER_YAML.read_text())
        os.environ["DAGSTER_HOME"] = str(home)  # for the instance here and in child processes
        return home

    @property
    def api_token(self) -> str | None:
        token = self.settings.api_token
        return token.get_secret_value() if token else None

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.get()


def _env(*, configured_databases: bool = False) -> Environment:
    """Read the settings once for this invocation; a configuration error is one clear line.
    ``configured_databases``: refuse the embedded server (a service of a production host)."""
    try:
        settings = load_settings()
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) + ': ' if e['loc'] else ''}{e['msg']}"
            for e in err.errors()
        )
        raise click.ClickException(f"configuration: {problems}") from None
    try:
        if configured_databases and settings.configured_database_urls() is None:
            raise ConfigurationError(
                "the services of a production host need the databases: set"
                f" {', '.join(DATABASE_URL_VARIABLES.values())} (deploy/jobstatus.env);"
                " `jobstatus dev` runs everything on the embedded server"
            )
        return Environment(settings)
    except ConfigurationError as err:
        raise click.ClickException(f"configuration: {err}") from None


@click.group()
def main() -> None:
    """jobstatus: PrintOS events and finishing scans → job status, on Dagster."""
    # Library notices (beta parameters, XDG runtime dir) are noise on a terminal.
    warnings.filterwarnings("ignore", category=UserWarning)


@main.command("migrate")
@click.option("--baseline", is_flag=True, help="First create the shop's own tables where missing.")
@click.option(
    "--roll-back-after",
    type=int,
    default=None,
    metavar="NNNN",
    help="Instead: undo the migrations numbered above NNNN, for an older jobstatus whose last"
    " migration that is (README, rolling back).",
)
def migrate_command(baseline: bool, roll_back_after: int | None) -> None:
    """Apply the migrations (safe to run again)."""
    from jobstatus_dagster.db import roll_back
    from jobstatus_dagster.pipeline import queue

    env = _env()
    if roll_back_after is not None:
        for database, ids in roll_back(env.urls, roll_back_after).items():
            click.echo(f"{database}: rolled back {', '.join(ids) if ids else 'nothing'}")
        return
    applied = _migrate(env, baseline)
    for database, ids in applied.items():
        click.echo(f"{database}: {', '.join(ids) if ids else 'up to date'}")
    # The one-run-per-source pools exist before any daemon dequeues a run (queue.ensure_pools).
    queue.ensure_pools(env.instance())


def _migrate(env: Environment, baseline: bool) -> dict[str, list[str]]:
    """db.migrate; a migration folder missing from the installation is one clear line, exit 1."""
    try:
        return migrate(env.urls, baseline=baseline)
    except MigrationsNotFound as err:
        raise click.ClickException(str(err)) from None


@main.command("demo-data")
@click.option("--scale", default=1, show_default=True, help="1 ≈ 200 jobs; grows linearly.")
@click.option("--seed", default=7, show_default=True)
def demo_data_command(scale: int, seed: int) -> None:
    """Fill an empty shop with a realistic synthetic print shop."""
    from jobstatus_dagster.demo import generate_shop

    env = _env()
    with engine_scope(env.urls.jobmanager) as jm, engine_scope(env.urls.logs) as logs:
        try:
            summary = generate_shop(jm, logs, scale=scale, seed=seed)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
    click.echo(summary.line())


def _definitions(env: Environment):
    from jobstatus_dagster.definitions import definitions_from_settings

    # The URLs as EnvVars (Environment exported them): a run's stored job snapshot, which the UI
    # shows, then names the variable and never holds a password.
    return definitions_from_settings(env.settings)


@main.command("process")
@click.option(
    "--source", type=click.Choice([*SOURCE_NAMES, "both"]), default="both", show_default=True
)
@click.option(
    "--wait",
    default=600,
    show_default=True,
    help="With a Dagster daemon: seconds to wait for the queued runs.",
)
def process_command(source: str, wait: int) -> None:
    """Process everything past the markers once, as Dagster runs in the instance.

    With a Dagster daemon serving the instance, the runs go through its run queue (one run per
    source at a time, next to the sensors' runs); without one, they run here, one after the other.
    """
    from jobstatus_dagster.pipeline import queue

    env = _env()
    defs = _definitions(env)
    instance = env.instance()
    sources = SOURCE_NAMES if source == "both" else (source,)
    if queue.daemon_serves(instance):
        sys.exit(_process_queued(defs, instance, sources, wait))
    click.echo(
        "No Dagster daemon serves this instance: processing here, in this process.", err=True
    )
    from jobstatus_dagster.pipeline.runner import process_source

    failed = False
    for name in sources:
        with _database_outage(name):
            outcome = process_source(defs, instance, name, trigger="cli")
        click.echo(outcome.line())
        failed |= not outcome.success
    sys.exit(1 if failed else 0)


def _process_queued(defs, instance, sources: tuple[str, ...], wait: int) -> int:
    """Queue a run per window, wait for them, print a line per source; the exit status."""
    from jobstatus_dagster.pipeline import queue
    from jobstatus_dagster.pipeline.runner import RunOutcome, SourceOutcome

    queue.ensure_pools(instance)
    submitted = {}
    for name in sources:
        with _database_outage(name):
            submitted[name] = queue.submit_source(defs, instance, name, "cli")
    run_ids = [run_id for sub in submitted.values() for run_id in sub.run_ids]
    runs = {run.run_id: run for run in queue.wait_for_runs(instance, run_ids, wait)}
    status = 0
    for name, sub in submitted.items():
        outcome = SourceOutcome(name)
        for run_id in sub.run_ids:
            run = runs[run_id]
            if run.status not in queue.FINISHED:
                click.echo(f"{name}: run {run_id} for {sub.windows[run_id]} is {run.status.value}")
                status = 3
                continue
            success = run.status.value == "SUCCESS"
            error = None if success else queue.run_error(instance, run_id)
            summary = queue.run_counts(instance, run_id)
            outcome.runs.append(RunOutcome(run_id, sub.windows[run_id], success, summary, error))
        click.echo(outcome.line())
        if not outcome.success:
            status = max(status, 1)
    return status


@contextmanager
def _database_outage(source: str) -> Iterator[None]:
    """A database gone mid-run (restart, network) is one line and exit 2, not a traceback; every
    window either committed whole or not at all (R18), so running again completes the work."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.OperationalError as err:
        reason = str(err.orig or err).strip().splitlines()[0]
        click.echo(
            f"{source}: database unavailable ({reason}); windows already processed stay"
            " committed, the one in progress is not: run again once the database is back",
            err=True,
        )
        sys.exit(2)


@main.command("backfill")
@click.option("--source", type=click.Choice(SOURCE_NAMES), required=True)
@click.option("--from", "from_marker", type=int, required=True, help="Exclusive lower marker.")
@click.option("--to", "to_marker", type=int, required=True, help="Inclusive upper marker.")
def backfill_command(source: str, from_marker: int, to_marker: int) -> None:
    """Process the rows with markers after FROM up to TO again. Safe to repeat: nothing is
    written twice and the markers never go back.

    With a Dagster daemon serving the instance, this submits a backfill over the marker ranges
    holding those rows: it shows on Dagster's Backfills page with each range's status, and each
    range is processed whole. Without one, the rows are processed here, window by window, as runs
    in the run history; the outcome of each window is printed.
    """
    from jobstatus_dagster.pipeline import queue

    if to_marker < from_marker:
        raise click.BadParameter("--to must not be below --from")
    env = _env()
    defs = _definitions(env)
    instance = env.instance()
    if queue.daemon_serves(instance, queue.BACKFILL_DAEMON):
        queue.ensure_pools(instance)
        backfill_id, ranges = queue.submit_backfill(
            defs, instance, source, from_marker, to_marker, "backfill"
        )
        if backfill_id is None:
            click.echo(f"{source}: no rows in markers ({from_marker}, {to_marker}]: nothing to do")
            return
        click.echo(
            f"{source}: backfill {backfill_id} submitted: markers ({from_marker}, {to_marker}]"
            f" lie in {len(ranges)} marker range(s) ({', '.join(ranges)}), each processed whole;"
            " follow it on Dagster's Backfills page"
        )
        return
    click.echo(
        "No Dagster daemon serves this instance: processing here, window by window (runs in the"
        " run history, not a backfill on the Backfills page).",
        err=True,
    )
    from jobstatus_dagster.pipeline.runner import backfill

    with _database_outage(source):
        outcome = backfill(defs, instance, source, from_marker, to_marker)
    for run in outcome.runs:
        state = "ok" if run.success else f"FAILED: {run.error}"
        click.echo(
            f"{run.window} run {run.run_id}: {run.summary.get('rows_read', 0)} rows read, "
            f"{run.summary.get('audit_rows_written', 0)} audit rows written, {state}"
        )
    click.echo(outcome.line())
    sys.exit(0 if outcome.success else 1)


@main.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=50, show_default=True, help="Audit rows shown.")
def status_command(job_id: str, as_json: bool, limit: int) -> None:
    """A job's current operations and its audit history."""
    from jobstatus_dagster.io.status import read_job_status

    env = _env()
    with engine_scope(env.urls.jobmanager) as jm, engine_scope(env.urls.logs) as logs:
        status = read_job_status(jm, logs, job_id, limit=limit)
    if status is None:
        raise click.ClickException(f"unknown job {job_id!r}")
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
        return
    click.echo(f"job {job_id}: {json.dumps(status['current_status'])}")
    for version in status["versions"]:
        click.echo(
            f"  version {version['version_tag']}: print {version['status'] or '-'}"
            f" ({version['notes'] or 'no print row'})"
        )
    for row in status["update_history"]:
        click.echo(
            f"  #{row['update_id']} {row['updated_at']} {row['source_type']}#{row['source_id']}"
            f" v{row['version_tag']} {row['operation_type']}={row['status']}"
            f"{'' if row['applied'] else ' (not applied)'}: {row['notes'] or ''}"
        )


def _simulate(env: Environment, stop: threading.Event, every: float) -> None:
    """A live shop: new print events (and scans) every few seconds, so sensors have work."""
    import random

    from jobstatus_dagster.demo import simulate_tick

    rng = random.Random()
    with engine_scope(env.urls.jobmanager) as jm, engine_scope(env.urls.logs) as logs:
        while not stop.wait(every):
            try:
                simulate_tick(jm, logs, rng)
            except Exception as err:  # noqa: BLE001 - the simulator must never take dev down
                click.echo(f"simulator: {err}", err=True)


@main.command("simulate")
@click.option("--every", default=10.0, show_default=True, help="Seconds between ticks.")
def simulate_command(every: float) -> None:
    """Keep appending print events and scans, like a live shop (Ctrl-C stops)."""
    env = _env()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _simulate(env, stop, every)
    except KeyboardInterrupt:
        stop.set()


def _api_app(env: Environment, token: str | None, read_token: str | None = None):
    from jobstatus_dagster.api import create_app

    return create_app(
        _definitions(env),
        env.instance(),
        env.urls.jobmanager,
        env.urls.logs,
        token,
        read_token=read_token,
        public_reads=env.settings.api_public_reads,
        webhook_allow_private=env.settings.webhook_allow_private,
        webhook_secret_overlap_seconds=env.settings.webhook_secret_overlap_seconds,
    )


def _read_token(env: Environment) -> str | None:
    configured = env.settings.api_read_token
    return configured.get_secret_value() if configured else None


@main.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
def api_command(host: str, port: int) -> None:
    """Serve the HTTP API; writes need `Authorization: Bearer $JOBSTATUS_API_TOKEN`.

    Without JOBSTATUS_API_TOKEN the write endpoints answer 503 (closed, not open). Processing
    requests queue Dagster runs: a Dagster daemon (`dagster-daemon run`, or `jobstatus dev`)
    must serve the instance for them to start.
    """
    import uvicorn

    from jobstatus_dagster.serving import server_config

    env = _env()
    token = env.api_token
    if not token:
        click.echo("JOBSTATUS_API_TOKEN is not set: the write endpoints answer 503.", err=True)
    read_token = _read_token(env)
    if not read_token and not env.settings.api_public_reads:
        click.echo(
            "JOBSTATUS_API_READ_TOKEN is not set and JOBSTATUS_API_PUBLIC_READS is not true:"
            " the read endpoints answer 503.",
            err=True,
        )
    uvicorn.Server(server_config(_api_app(env, token, read_token), host, port)).run()


@main.command("dev")
@click.option("--port", default=3000, show_default=True, help="Dagster UI port.")
@click.option("--api-port", default=8000, show_default=True, help="HTTP API port.")
@click.option("--simulate-every", default=10.0, show_default=True, help="0 disables the simulator.")
def dev_command(port: int, api_port: int, simulate_every: float) -> None:
    """Everything at once: database, migrations, demo shop, the Dagster services of a production
    host (code server, daemon, UI behind its guard), HTTP API, simulator. The console shows one
    line per finished run; the services' own logs are under $JOBSTATUS_HOME/logs."""
    import secrets

    import uvicorn

    from jobstatus_dagster.demo import generate_shop, shop_is_empty
    from jobstatus_dagster.pipeline import queue
    from jobstatus_dagster.serving import server_config

    # Everything runs on 127.0.0.1 here: webhook receivers too (unless the operator said no).
    # Set in the environment, so the Dagster processes started below deliver to them as well.
    os.environ.setdefault("JOBSTATUS_WEBHOOK_ALLOW_PRIVATE", "true")
    env = _env()
    _migrate(env, baseline=True)
    queue.ensure_pools(env.instance())  # before the daemon dequeues the sensors' first runs
    with engine_scope(env.urls.jobmanager) as jm, engine_scope(env.urls.logs) as logs:
        if shop_is_empty(jm, logs):
            click.echo(generate_shop(jm, logs).line())
    stop = threading.Event()
    if simulate_every > 0:
        threading.Thread(target=_simulate, args=(env, stop, simulate_every), daemon=True).start()
    configured = env.api_token
    token = configured or secrets.token_urlsafe(24)
    configured_read = _read_token(env)
    read_token = configured_read or secrets.token_urlsafe(24)
    api = uvicorn.Server(
        server_config(_api_app(env, token, read_token), "127.0.0.1", api_port, log_level="warning")
    )
    threading.Thread(target=api.run, name="jobstatus-api", daemon=True).start()
    # The code server on a free port of its own: a production code server on this host keeps
    # the default one. The services read it from the environment, as on a production host.
    os.environ["JOBSTATUS_CODE_SERVER_HOST"] = "127.0.0.1"
    os.environ["JOBSTATUS_CODE_SERVER_PORT"] = str(_free_port())
    logs_dir = env.settings.home_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"Dagster UI: http://127.0.0.1:{port}  (DAGSTER_HOME={env.dagster_home})")
    click.echo(f"HTTP API:   http://127.0.0.1:{api_port}/docs")
    click.echo(f"Logs of the code server, daemon and UI: {logs_dir}/")
    if not configured:
        click.echo(f"API token (this session only; set JOBSTATUS_API_TOKEN to keep one): {token}")
    if not configured_read:
        click.echo(
            "API read token (this session only; set JOBSTATUS_API_READ_TOKEN to keep one):"
            f" {read_token}"
        )
    click.echo("One line per finished run below; the UI has every event. Ctrl-C stops.")
    interrupt_on_stop_signals()  # Ctrl-C and SIGTERM stop the services and the embedded server
    stop_when_parent_exits()  # `make run` killed cannot pass a signal on
    try:
        with contextlib.ExitStack() as services:
            groups = {}
            for name, args in SERVICES_OF_DEV(port):
                log = services.enter_context((logs_dir / f"{name}.log").open("a"))
                # Each service in its own process group: it stops with everything it started
                # (the code server with its run workers). Stopped in reverse order.
                groups[name] = services.enter_context(
                    process_group(
                        [sys.executable, "-m", "jobstatus_dagster.cli", "serve", name, *args],
                        cwd=env.dagster_home,
                        stdout=log,
                        grace=30.0,
                    )
                )
            _follow_runs(env.instance(), groups, logs_dir)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        api.should_exit = True
        time.sleep(0.1)


def SERVICES_OF_DEV(port: int) -> list[tuple[str, list[str]]]:  # noqa: N802 - a table
    """What `jobstatus dev` starts: the production services, the UI on ``port``."""
    return [("code-server", []), ("daemon", []), ("webserver", ["--port", str(port)])]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _follow_runs(instance, groups: dict, logs_dir: Path) -> None:
    """Print a line per run that finishes (its window and counts) until a service stops on
    its own, which ends `jobstatus dev` with the end of that service's log."""
    from datetime import UTC, datetime, timedelta

    import dagster as dg

    from jobstatus_dagster.pipeline import queue

    printed: set[str] = set()
    since = datetime.now(UTC)
    while True:
        for name, group in groups.items():
            if group.popen.poll() is not None:
                tail = (logs_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise click.ClickException(
                    f"the {name} stopped on its own (exit {group.popen.returncode});"
                    f" the end of {logs_dir / name}.log:\n{tail}"
                )
        records = instance.get_run_records(
            dg.RunsFilter(
                statuses=list(queue.FINISHED), updated_after=since - timedelta(seconds=30)
            ),
            order_by="update_timestamp",
            ascending=True,
        )
        for record in records:
            run = record.dagster_run
            if run.run_id in printed:
                continue
            printed.add(run.run_id)
            click.echo(_run_line(instance, run, record.update_timestamp))
        time.sleep(2)


def _run_line(instance, run, finished_at) -> str:
    """``12:01:33 print_os:1200-1234 SUCCESS: 35 rows read, 12 jobs updated, ... (run 1a2b3c4d)``"""
    from jobstatus_dagster.pipeline import queue

    what = run.tags.get("jobstatus/window", run.job_name)
    text = f"{finished_at.astimezone().strftime('%H:%M:%S')} {what} {run.status.value}"
    counts = queue.run_counts(instance, run.run_id) if "jobstatus/window" in run.tags else {}
    if counts:
        text += (
            f": {counts.get('rows_read', 0)} rows read, {counts.get('jobs_updated', 0)} jobs"
            f" updated, {counts.get('audit_rows_written', 0)} audit rows,"
            f" {counts.get('failures_recorded', 0)} failures, marker {counts.get('marker_after', '?')}"
        )
    if run.status.value != "SUCCESS":
        error = queue.run_error(instance, run.run_id)
        if error:
            text += f": {error.splitlines()[0]}"
    return f"{text} (run {run.run_id[:8]})"


# The services of a production host (deploy/): one command each, for systemd or by hand.


@main.group("serve")
def serve_group() -> None:
    """One service of a production host (deploy/ has a systemd unit for each): `code-server`
    (the code location, its sensors and its runs), `daemon` (sensors, run queue, backfills),
    `webserver` (the Dagster UI), `api` (the HTTP API). They need the three database URLs."""


def _become(command: list[str]) -> NoReturn:
    """Replace this process with ``command``: a service manager's stop signal then reaches the
    Dagster process itself. Stop signals go back to their defaults first: an ignored SIGINT
    stays ignored across exec, and Dagster handles SIGTERM as its SIGINT."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # noqa: S606 - our own venv's executables


def _venv_command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _wait_for_code_server(settings: Settings, timeout: float = 300.0) -> None:
    """Until the code server accepts connections (it listens once the code has loaded), so the
    daemon's first ticks and the UI's first page find the code location."""
    import socket

    deadline = time.monotonic() + timeout
    address = (settings.code_server_host, settings.code_server_port)
    while time.monotonic() < deadline:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(2)
            s.connect(address)
            return
        time.sleep(0.5)
    click.echo(
        f"the code server at {address[0]}:{address[1]} does not answer yet: starting anyway"
        " (the code location loads once it does)",
        err=True,
    )


@serve_group.command("code-server")
def serve_code_server_command() -> None:
    """`dagster code-server start` for the code location, on JOBSTATUS_CODE_SERVER_HOST/PORT.
    Sensors are evaluated and runs execute in its child processes; `jobstatus reload` loads new
    code without stopping the runs in flight."""
    from jobstatus_dagster.pipeline.queue import LOCATION_NAME

    env = _env(configured_databases=True)
    _become(
        [
            _venv_command("dagster"),
            "code-server",
            "start",
            "--module-name",
            "jobstatus_dagster.definitions",
            "--location-name",
            LOCATION_NAME,
            "--host",
            env.settings.code_server_host,
            "--port",
            str(env.settings.code_server_port),
        ]
    )


@serve_group.command("daemon")
def serve_daemon_command() -> None:
    """`dagster-daemon run` (sensors, schedules, run queue, backfills, run monitoring) over the
    code server."""
    env = _env(configured_databases=True)
    workspace = grpc_workspace(
        env.dagster_home, env.settings.code_server_host, env.settings.code_server_port
    )
    _wait_for_code_server(env.settings)
    _become([_venv_command("dagster-daemon"), "run", "--workspace", str(workspace)])


@serve_group.command("webserver")
@click.option("--host", default="127.0.0.1", show_default=True, help="Behind the reverse proxy.")
@click.option("--port", default=3000, show_default=True)
@click.option("--read-only", is_flag=True, help="For viewers: nothing can be launched or changed.")
@click.option("--path-prefix", default="", help="When the proxy serves the UI under a path.")
def serve_webserver_command(host: str, port: int, read_only: bool, path_prefix: str) -> None:
    """The Dagster UI over the code server, behind a guard that refuses cross-site requests,
    GraphQL mutations sent as GET and Host headers other than 127.0.0.1/localhost on this port
    or JOBSTATUS_UI_HOSTS. It does not authenticate: the reverse proxy does (deploy/)."""
    from jobstatus_dagster import webserver

    env = _env(configured_databases=True)
    workspace = grpc_workspace(
        env.dagster_home, env.settings.code_server_host, env.settings.code_server_port
    )
    door = webserver.Door.of([*webserver.local_hosts(port), *env.settings.ui_hosts.split(",")])
    _wait_for_code_server(env.settings)
    webserver.serve(workspace, host, port, door, read_only=read_only, path_prefix=path_prefix)


@serve_group.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.pass_context
def serve_api_command(ctx: click.Context, host: str, port: int) -> None:
    """The HTTP API (as `jobstatus api`)."""
    ctx.invoke(api_command, host=host, port=port)


@main.command("deploy-files")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that differ from this version's.")
def deploy_files_command(directory: Path, force: bool) -> None:
    """Write this version's deploy/ files into DIRECTORY: the systemd units, the environment
    file, the Caddyfile and grants.sql (README "Production"). A file already there that differs
    is left alone unless --force, so an edited copy is never lost."""
    sources = sorted(
        p for p in DEPLOY_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    targets = {source: directory / source.relative_to(DEPLOY_DIR) for source in sources}
    differing = [
        str(target)
        for source, target in targets.items()
        if target.exists() and target.read_bytes() != source.read_bytes()
    ]
    if differing and not force:
        raise click.ClickException(
            f"these files exist and differ from this version's (--force overwrites them):"
            f" {', '.join(differing)}"
        )
    for source, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        click.echo(str(target))


@main.command("watchdog")
@click.option(
    "--heartbeat-tolerance",
    default=300,
    show_default=True,
    help="Seconds a required daemon may be silent (beyond its 30 s beat) before it counts as down.",
)
def watchdog_command(heartbeat_tolerance: int) -> None:
    """One look at what the alerts depend on: the Dagster daemon's heartbeats and whether the code
    server answers. Each is an incident in alert_incidents, alerted on the same channels when it
    opens and when it clears (deploy/systemd/jobstatus-watchdog.timer runs this every minute).
    Exits 1 when an alert it owes could not be sent."""
    import logging

    from jobstatus_dagster.definitions import alert_channels_from_settings
    from jobstatus_dagster.watchdog import watch

    env = _env()
    with engine_scope(env.urls.jobmanager) as engine:
        report = watch(
            env.instance,  # built within the look's bound: an unreachable `dagster` is a sign
            engine,
            alert_channels_from_settings(env.settings, secrets=True),
            (env.settings.code_server_host, env.settings.code_server_port),
            tolerance_seconds=heartbeat_tolerance,
            log=logging.getLogger("jobstatus.watchdog"),
        )
    click.echo(report.line())
    if report.failed:
        raise click.ClickException(f"{report.failed} alert(s) not sent: sent again next time")


@main.command("reload")
@click.option("--ui", default="127.0.0.1:3000", show_default=True, help="The operators' webserver.")
def reload_command(ui: str) -> None:
    """Load the code as installed now without stopping runs: the code server starts a new
    process with it, and the old one exits once its runs in flight have finished (the UI's
    *Reload* button on the code location does the same)."""
    from dagster_graphql import DagsterGraphQLClient, ReloadRepositoryLocationStatus

    from jobstatus_dagster.pipeline.queue import LOCATION_NAME

    host, _, port = ui.rpartition(":")
    client = DagsterGraphQLClient(host or "127.0.0.1", port_number=int(port))
    try:
        info = client.reload_repository_location(LOCATION_NAME)
    except Exception as err:  # noqa: BLE001 - the webserver unreachable is one line
        raise click.ClickException(f"the webserver at {ui} did not answer: {err}") from None
    if info.status != ReloadRepositoryLocationStatus.SUCCESS:
        raise click.ClickException(f"reload failed: {info.failure_type}: {info.message}")
    click.echo(f"{LOCATION_NAME}: code location reloaded")


if __name__ == "__main__":
    main()
