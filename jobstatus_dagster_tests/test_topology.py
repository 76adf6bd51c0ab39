"""The production topology of deploy/, for real: `jobstatus serve code-server`, `daemon` and
`webserver` as separate processes on the embedded server, the webserver and the daemon loading
the code location from the one code server (a `grpc_server` workspace entry). A sensor launches
runs through it, a reload while the daemon runs swaps the code server's process and the next run
succeeds, the UI's guard refuses what a foreign page could send, and SIGTERM to each service
leaves no process behind."""

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import httpx
import psutil
import pytest
import sqlalchemy as sa

from jobstatus_dagster.db import DatabaseUrls, make_engine
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.io.writer import WRITER_LOCK
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import T0, Shop
from jobstatus_testkit.cli import JOBSTATUS, cli_env
from jobstatus_testkit.processes import free_port, port_open, processes_with

PARTITIONS = "print_os_marker_ranges"
# A run left STARTED by a SIGKILL is failed after this long without an event (600 by default); a
# run of these tests held at the writers' lock is silent for far less.
STALE_RUN_SECONDS = 120


@dataclass
class Topology:
    home: Path
    urls: DatabaseUrls
    instance: dg.DagsterInstance
    services: dict[str, subprocess.Popen]
    ui_port: int
    env: dict[str, str]
    viewer_port: int = 0
    code_port: int = 0
    api_port: int = 0

    def start(self, name: str, args: list[str]) -> None:
        with (self.home / f"{name}.log").open("a") as log:
            self.services[name] = subprocess.Popen(
                [JOBSTATUS, "serve", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")[-4000:]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.services)

    def left(self) -> list[str]:
        """Every live process started for this topology (they all carry its JOBSTATUS_HOME)."""
        return processes_with(str(self.home), in_environ=True)

    def ui(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.ui_port}"

    def code_server(self) -> psutil.Process:
        """`dagster code-server start`: `jobstatus serve code-server` became it (exec)."""
        if "code-server" in self.services:
            return psutil.Process(self.services["code-server"].pid)
        (server,) = [
            proc
            for popen in self.services.values()
            for proc in psutil.Process(popen.pid).children(recursive=True)
            if "code-server" in proc.cmdline() and "start" in proc.cmdline()
        ]
        return server


def _wait(what: str, condition, topology: Topology, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        for name, popen in topology.services.items():
            assert popen.poll() is None, f"{name} exited\n{topology.logs()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{topology.logs()}"
        time.sleep(0.5)
    return value


def _sensor_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(tags={"jobstatus/trigger": "sensor"})))


@contextmanager
def services_instance(urls: DatabaseUrls, tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    """The instance the services use, read from this process (the product's dagster.yaml)."""
    with dg.instance_for_test(
        temp_dir=str(tmp_path_factory.mktemp("instance")),
        overrides=instance_overrides(urls.dagster),
    ) as instance:
        yield instance


def kill_what_is_left(home: Path) -> None:
    for line in processes_with(str(home), in_environ=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(int(line.split(":")[0])).kill()


@pytest.fixture(scope="module")
def topology(pg_server, tmp_path_factory) -> Iterator[Topology]:
    urls = pg_server.migrated("topology")
    home = tmp_path_factory.mktemp("topology")
    code_port, ui_port, viewer_port, api_port = free_port(), free_port(), free_port(), free_port()
    env = cli_env(
        urls,
        home,
        JOBSTATUS_CODE_SERVER_PORT=str(code_port),
        JOBSTATUS_SENSOR_INTERVAL_SECONDS="5",
        JOBSTATUS_STALE_RUN_SECONDS=str(STALE_RUN_SECONDS),
    )
    commands = {
        "code-server": ["code-server"],
        "daemon": ["daemon"],
        "webserver": ["webserver", "--port", str(ui_port)],
        "viewer": ["webserver", "--port", str(viewer_port), "--read-only"],
        "api": ["api", "--port", str(api_port)],
    }
    services = {}
    with services_instance(urls, tmp_path_factory) as instance:
        try:
            for name, args in commands.items():
                with (home / f"{name}.log").open("w") as log:
                    services[name] = subprocess.Popen(
                        [JOBSTATUS, "serve", *args], env=env, stdout=log, stderr=subprocess.STDOUT
                    )
            topology = Topology(
                home,
                urls,
                instance,
                services,
                ui_port,
                env,
                viewer_port=viewer_port,
                code_port=code_port,
                api_port=api_port,
            )
            for port in (code_port, ui_port, viewer_port, api_port):
                _wait(f"port {port}", lambda p=port: port_open(p), topology)
            yield topology
        finally:
            for popen in services.values():
                if popen.poll() is None:
                    popen.kill()
            kill_what_is_left(home)


def test_the_daemon_and_the_webserver_load_the_code_location_from_the_code_server(
    topology: Topology,
) -> None:
    """One code server for the location: the daemon and the webservers start none of their own
    (the daemon's python_module workspace started a fresh one every 60 s)."""
    workspace = (topology.home / "dagster_home" / "grpc_workspace.yaml").read_text()
    assert "grpc_server" in workspace and f"port: {topology.code_port}" in workspace
    for name in ("daemon", "webserver", "viewer", "api"):
        assert psutil.Process(topology.services[name].pid).children(recursive=True) == [], name
    code_server = psutil.Process(topology.services["code-server"].pid)
    assert "code-server" in " ".join(code_server.cmdline())  # `jobstatus serve` became Dagster's


def test_the_api_service_answers(topology: Topology) -> None:
    docs = httpx.get(f"http://127.0.0.1:{topology.api_port}/openapi.json", timeout=30)
    assert docs.status_code == 200 and "/api/job-status/{job_id}" in docs.json()["paths"]


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _idle(topology: Topology, source: str = "print_os") -> bool:
    """No run of ``source`` queued or running: the writers' lock can be taken without holding
    up one that came before."""
    runs = topology.instance.get_runs(
        dg.RunsFilter(tags={"jobstatus/source": source}, statuses=IN_FLIGHT)
    )
    return not runs


def _backlog_processed_by_the_sensors(topology: Topology) -> None:
    """The small backlog, in the shop before or after the services started, processed by
    sensor-launched runs of both sources that all succeeded; none in flight."""

    def both_done() -> bool:
        done = {
            r.tags["jobstatus/source"]
            for r in _sensor_runs(topology.instance)
            if r.status == dg.DagsterRunStatus.SUCCESS
        }
        return done == {"print_os", "scanner"} and _idle(topology) and _idle(topology, "scanner")

    _wait("a successful sensor run of each source, none in flight", both_done, topology)
    runs = _sensor_runs(topology.instance)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), runs


def test_a_sensor_launched_run_succeeds(topology: Topology) -> None:
    with Shop(topology.urls) as shop:
        fill_small_backlog(shop)
    _backlog_processed_by_the_sensors(topology)


TICK_LOGS = """{sensorOrError(sensorSelector: {repositoryLocationName: "jobstatus",
  repositoryName: "__repository__", sensorName: "print_os_sensor"}) {
  ... on Sensor { sensorState { ticks(limit: 50) { status logEvents { events { message } } } } }
}}"""


def test_what_a_sensor_logs_is_shown_under_its_tick_in_the_ui(topology: Topology) -> None:
    """`context.log` of a tick reaches the UI (Sensors → tick → logs), not only the code
    server's stderr."""
    ui = topology.ui()
    logs = topology.home / "dagster_home" / "tick_logs" / "__repository__" / "print_os_sensor"
    deadline = time.monotonic() + 90
    while True:  # until a tick that had nothing to say came after the one that requested runs
        answer = httpx.post(f"{ui}/graphql", json={"query": TICK_LOGS}, timeout=60).json()
        ticks = answer["data"]["sensorOrError"]["sensorState"]["ticks"]
        files = list(logs.glob("*.err"))
        messages = [e["message"] for t in ticks for e in t["logEvents"]["events"]]
        requested = any(m.startswith("requesting print_os:") for m in messages)
        if (requested and len(ticks) > len(files)) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert any(m.startswith("requesting print_os:") for m in messages), answer
    # A tick that logged nothing left no file behind.
    assert 0 < len(files) < len(ticks), files


def _printed_job(shop: Shop, marker: int) -> str:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-I", [f"FILE_1_Labex_{job}_1"])
    shop.print_event(f"{job}-I", "PRINTED", marker=marker, at=T0)
    return job


def _print_os_runs(topology: Topology, status: dg.DagsterRunStatus, after: float) -> list:
    return [
        r.dagster_run
        for r in topology.instance.get_run_records(
            dg.RunsFilter(
                tags={"jobstatus/trigger": "sensor", "jobstatus/source": "print_os"},
                statuses=[status],
            )
        )
        if r.create_timestamp.timestamp() > after
    ]


def _reload_while_a_run_is_in_flight(topology: Topology, marker: int) -> None:
    """`jobstatus reload` (README "Deploying a new version"): a new code process serves the
    location, the old one finishes its run in flight and only then exits; the daemon, running
    all along, launches the next run into the new one. ``marker``: of the two print events."""
    _wait("no print_os run in flight", lambda: _idle(topology), topology)
    code_server = topology.code_server()
    before = {p.pid for p in code_server.children()}
    assert before, "the code server runs its code location in a child process"
    started = time.time()
    with Shop(topology.urls) as shop, make_engine(topology.urls.jobmanager).connect() as holder:
        # The writers' lock held here: the next run stops at its write, in flight.
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": WRITER_LOCK})
        try:
            held = _printed_job(shop, marker)
            in_flight = _wait(
                "a sensor run in flight",
                lambda: _print_os_runs(topology, dg.DagsterRunStatus.STARTED, started),
                topology,
            )[0]
            reloaded = subprocess.run(
                [JOBSTATUS, "reload", "--ui", f"127.0.0.1:{topology.ui_port}"],
                env=cli_env(topology.urls, topology.home),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert reloaded.returncode == 0, reloaded.stderr[-3000:]
            assert "reloaded" in reloaded.stdout
            _wait(
                "a new code process",
                lambda: {p.pid for p in code_server.children()} - before,
                topology,
            )
            time.sleep(5)  # the old one must not end its run, however long it waits
            assert all(psutil.pid_exists(pid) for pid in before)
            run = topology.instance.get_run_by_id(in_flight.run_id)
            assert run.status == dg.DagsterRunStatus.STARTED, run.status
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": WRITER_LOCK})
            holder.commit()
        finished = _wait(
            "the run in flight finished",
            lambda: (
                topology.instance.get_run_by_id(in_flight.run_id).status
                in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
            ),
            topology,
        )
        assert finished and topology.instance.get_run_by_id(in_flight.run_id).status == (
            dg.DagsterRunStatus.SUCCESS
        )
        assert shop.job_operations_json(held) == {"print": True}
        # Its run done, the old code process exits.
        _wait(
            "the old code process gone",
            lambda: not ({p.pid for p in code_server.children()} & before),
            topology,
        )
        reloaded_at = time.time()
        job = _printed_job(shop, marker + 1)
        _wait(
            "a sensor run after the reload that succeeds",
            lambda: _print_os_runs(topology, dg.DagsterRunStatus.SUCCESS, reloaded_at),
            topology,
        )
        assert shop.job_operations_json(job) == {"print": True}


def test_reload_while_a_run_is_in_flight_lets_it_finish_and_the_next_run_succeeds(
    topology: Topology,
) -> None:
    _reload_while_a_run_is_in_flight(topology, 10_000)


def test_a_code_server_restart_ends_the_run_in_flight_and_its_rows_are_processed_again(
    topology: Topology,
) -> None:
    """What `systemctl restart jobstatus-code-server` does (README): systemd signals the whole
    control group at once, run workers included; the run in flight ends as a failure (at once,
    or, when Dagster retried the interrupted step, once the sensor finds it stale), and once the
    code server is back the sensor requests its window again, which succeeds."""
    _wait("no print_os run in flight", lambda: _idle(topology), topology)
    code_server = topology.code_server()
    started = time.time()
    with Shop(topology.urls) as shop, make_engine(topology.urls.jobmanager).connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": WRITER_LOCK})
        try:
            job = _printed_job(shop, 10_002)
            in_flight = _wait(
                "a sensor run in flight",
                lambda: _print_os_runs(topology, dg.DagsterRunStatus.STARTED, started),
                topology,
            )[0]
            group = [code_server, *code_server.children(recursive=True)]
            assert len(group) >= 3, group  # the code server, its code process, the run worker
            for proc in group:  # KillMode=control-group: SIGTERM to every process at once
                proc.send_signal(signal.SIGTERM)
            _, alive = psutil.wait_procs(group, timeout=90)
            for proc in alive:  # TimeoutStopSec=90, then SIGKILL
                proc.kill()
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": WRITER_LOCK})
            holder.commit()
        topology.start("code-server", ["code-server"])
        # Failed at once when the interrupt ended it; when the SIGTERM landed in a step with a
        # retry policy, Dagster retried the step, the SIGKILL left the run STARTED, and the
        # sensor fails it once it has been silent JOBSTATUS_STALE_RUN_SECONDS.
        _wait(
            "the run in flight ended as a failure",
            lambda: (
                topology.instance.get_run_by_id(in_flight.run_id).status
                == dg.DagsterRunStatus.FAILURE
            ),
            topology,
            timeout=STALE_RUN_SECONDS + 240,
        )
        _wait(
            "the window processed again after the restart",
            lambda: _print_os_runs(topology, dg.DagsterRunStatus.SUCCESS, started),
            topology,
        )
        assert shop.job_operations_json(job) == {"print": True}


MUTATION = (
    'mutation{addDynamicPartition(repositorySelector:{repositoryLocationName:"jobstatus",'
    f'repositoryName:"__repository__"}},partitionsDefName:"{PARTITIONS}",partitionKey:"bogus")'
    "{__typename}}"
)


def test_the_ui_refuses_a_cross_site_get_mutation_and_a_foreign_host(topology: Topology) -> None:
    """The request of issue 20 (a foreign page's <img>) is refused and changes nothing; the
    same-origin UI keeps working."""
    ui = topology.ui()
    evil = httpx.get(
        f"{ui}/graphql",
        params={"query": MUTATION},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert evil.status_code == 403, evil.text
    # Without the browser's headers too: a mutation is never executed from a GET.
    bare = httpx.get(f"{ui}/graphql", params={"query": MUTATION})
    assert bare.status_code == 403 and "mutation sent as GET" in bare.text
    rebound = httpx.get(f"{ui}/", headers={"Host": "evil.example:3000"})
    assert rebound.status_code == 403 and "foreign Host" in rebound.text
    assert "bogus" not in topology.instance.get_dynamic_partitions(PARTITIONS)

    page = httpx.get(f"{ui}/", headers={"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"})
    assert page.status_code == 200 and "<html" in page.text.lower()
    same_origin = {"Origin": ui, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    version = httpx.post(f"{ui}/graphql", json={"query": "{version}"}, headers=same_origin)
    assert version.status_code == 200 and version.json()["data"]["version"]


def test_a_same_origin_post_mutation_works_and_the_viewer_cannot_mutate(
    topology: Topology,
) -> None:
    """What the guard refused above is a real mutation: posted from the UI's own origin it adds
    the partition. The viewers' read-only webserver refuses it."""
    viewer = topology.ui(topology.viewer_port)
    refused = httpx.post(
        f"{viewer}/graphql",
        json={"query": MUTATION.replace("bogus", "viewer-bogus")},
        headers={"Origin": viewer, "Sec-Fetch-Site": "same-origin"},
    )
    assert refused.status_code == 200
    assert refused.json()["data"]["addDynamicPartition"]["__typename"] == "UnauthorizedError"
    ui = topology.ui()
    added = httpx.post(
        f"{ui}/graphql",
        json={"query": MUTATION},
        headers={"Origin": ui, "Sec-Fetch-Site": "same-origin"},
    )
    assert added.status_code == 200, added.text
    assert added.json()["data"]["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
    partitions = topology.instance.get_dynamic_partitions(PARTITIONS)
    assert "bogus" in partitions and "viewer-bogus" not in partitions


def test_sigterm_to_each_service_leaves_no_process(topology: Topology) -> None:
    assert len(topology.left()) >= 6  # five services and the code server's code process
    for popen in topology.services.values():
        popen.send_signal(signal.SIGTERM)
    for name, popen in topology.services.items():
        popen.wait(timeout=90)
        assert popen.returncode is not None, name
    deadline = time.monotonic() + 60
    while topology.left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert topology.left() == []


def test_jobstatus_dev_reloads_while_its_daemon_runs_and_sigterm_leaves_no_process(
    pg_server, tmp_path_factory
) -> None:
    """The same for `jobstatus dev` (issue 20), which runs these services itself: its sensors
    process the shop's backlog, a reload while its daemon runs lets the run in flight finish in
    the old code process and the next sensor run succeed in the new one, and SIGTERM (a service
    manager, `make run` stopped) leaves none of its processes behind."""
    urls = pg_server.migrated("topology_dev")
    with Shop(urls) as shop:
        fill_small_backlog(shop)  # a shop with data: `jobstatus dev` adds no demo shop
    home = tmp_path_factory.mktemp("dev")
    ui_port, api_port = free_port(), free_port()
    env = cli_env(urls, home, JOBSTATUS_SENSOR_INTERVAL_SECONDS="5")
    command = [JOBSTATUS, "dev", "--port", str(ui_port), "--api-port", str(api_port)]
    with services_instance(urls, tmp_path_factory) as instance:
        try:
            with (home / "dev.log").open("w") as log:
                dev = subprocess.Popen(
                    [*command, "--simulate-every", "0"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            topology = Topology(home, urls, instance, {"dev": dev}, ui_port, env)
            _wait("the UI", lambda: port_open(ui_port), topology)
            _backlog_processed_by_the_sensors(topology)
            _reload_while_a_run_is_in_flight(topology, 10_000)
            # jobstatus dev, the code server and its code process, the daemon, the webserver
            assert len(topology.left()) >= 5, topology.left()
            dev.send_signal(signal.SIGTERM)
            dev.wait(timeout=120)
            deadline = time.monotonic() + 60
            while topology.left() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert topology.left() == []
        finally:
            if dev.poll() is None:
                dev.kill()
            kill_what_is_left(home)
