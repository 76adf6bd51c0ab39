"""`jobstatus watchdog` (review of issue 20): the daemon runs the alert sensor and the code server
evaluates it, so with either down nothing is alerted. The watchdog, run as its own OS process as
the systemd timer runs it, reads the daemon heartbeats from Dagster's storage and pings the code
server, and alerts a real receiver on 127.0.0.1 once when each goes down and once when it is
back. Heartbeats are written through the instance's own API, as a running daemon writes them."""

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import grpc
import pytest
import sqlalchemy as sa
from dagster._daemon.types import DaemonHeartbeat
from dagster._grpc.__generated__ import dagster_api_pb2, dagster_api_pb2_grpc

from jobstatus_dagster.db import engine_scope, to_sqlalchemy_url
from jobstatus_dagster.instance import PACKAGE_DIR
from jobstatus_dagster.io import incidents
from jobstatus_dagster.io.incidents import open_incidents
from jobstatus_dagster.pipeline.alerts import AlertChannels, send_unsent
from jobstatus_testkit.cli import Completed, run_cli
from jobstatus_testkit.processes import free_port, port_open
from jobstatus_testkit.receivers import HttpReceiver, http_receiver

DAEMON, CODE_SERVER = "service:dagster-daemon", "service:code-server"
DAGSTER = str(Path(sys.executable).with_name("dagster"))


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as r:
        yield r


def beat(instance: dg.DagsterInstance, at: float) -> None:
    """A heartbeat of every daemon this instance needs, as `dagster-daemon run` writes them."""
    for daemon_type in instance.get_required_daemon_types():
        instance.add_daemon_heartbeat(DaemonHeartbeat(at, daemon_type, "test-daemon", None))


def unit_timeout_seconds() -> int:
    """TimeoutStartSec of the watchdog's unit: systemd ends a look that takes longer."""
    unit = (PACKAGE_DIR / "deploy" / "systemd" / "jobstatus-watchdog.service").read_text()
    return int(re.search(r"^TimeoutStartSec=(\d+)$", unit, re.M).group(1))


def states(receiver: HttpReceiver, subject: str) -> list[str]:
    return [b["incident"]["state"] for b in receiver.bodies if b["incident"]["subject"] == subject]


def test_the_watchdog_alerts_once_when_the_daemon_and_code_server_are_down_and_clears_them(
    urls, instance, receiver: HttpReceiver, tmp_path: Path
) -> None:
    port = free_port()

    def watchdog() -> Completed:
        return run_cli(
            urls,
            tmp_path / "home",
            "watchdog",
            JOBSTATUS_ALERT_WEBHOOK_URL=receiver.url,
            JOBSTATUS_CODE_SERVER_HOST="127.0.0.1",
            JOBSTATUS_CODE_SERVER_PORT=str(port),
        )

    # No daemon has ever beaten and nothing listens on the code server's port.
    instance.wipe_daemon_heartbeats()
    receiver.failures_left = 2  # the receiver refuses both alerts at first
    first = watchdog()
    assert first.returncode == 1 and "2 alert(s) not sent" in first.stderr, first.stderr
    assert states(receiver, DAEMON) == [] and states(receiver, CODE_SERVER) == []

    # The alerts sensor's sending never takes the watchdog's incidents (no alert sent twice).
    with engine_scope(urls.jobmanager) as engine:
        send_unsent(engine, AlertChannels(webhook_url=receiver.url))
    assert states(receiver, DAEMON) == [] and states(receiver, CODE_SERVER) == []

    second = watchdog()
    assert second.returncode == 0, second.stderr
    assert states(receiver, DAEMON) == ["open"] and states(receiver, CODE_SERVER) == ["open"]
    (daemon_down,) = [b for b in receiver.bodies if b["incident"]["subject"] == DAEMON]
    assert "the Dagster daemon is down (no heartbeat at all; silent: " in daemon_down["text"]
    assert "SENSOR" in daemon_down["incident"]["detail"]["silent_daemons"]
    (code_down,) = [b for b in receiver.bodies if b["incident"]["subject"] == CODE_SERVER]
    assert f"the code server at 127.0.0.1:{port} does not answer" in code_down["text"]

    # A stale heartbeat (the daemon died an hour ago) is the same incident: no new alert.
    stale = time.time() - 3600
    beat(instance, stale)
    assert watchdog().returncode == 0
    assert states(receiver, DAEMON) == ["open"] and states(receiver, CODE_SERVER) == ["open"]

    # The daemon beats again and a real code server answers: each cleared, once.
    beat(instance, time.time())
    with code_server(tmp_path, port, "defs = dg.Definitions()"):
        back = watchdog()
        assert back.returncode == 0, back.stderr
        assert f"{DAEMON}: up; {CODE_SERVER}: up" in back.stdout
        assert states(receiver, DAEMON) == ["open", "cleared"]
        assert states(receiver, CODE_SERVER) == ["open", "cleared"]
        cleared = [b for b in receiver.bodies if b["incident"]["subject"] == DAEMON][-1]
        assert cleared["text"].startswith("[jobstatus] CLEARED at ")
        assert "the daemon beat at " in cleared["text"]
        assert watchdog().returncode == 0
        assert len(states(receiver, DAEMON)) == 2 and len(states(receiver, CODE_SERVER)) == 2

    # A code server that answers but whose code failed to load (a bad reload) runs no sensor.
    beat(instance, time.time())
    with code_server(tmp_path, port, "raise RuntimeError('broken on purpose')"):
        assert watchdog().returncode == 0
    assert states(receiver, CODE_SERVER) == ["open", "cleared", "open"]
    assert states(receiver, DAEMON) == ["open", "cleared"]
    broken = [b for b in receiver.bodies if b["incident"]["subject"] == CODE_SERVER][-1]
    assert "answers but its code did not load" in broken["text"]
    assert "broken on purpose" in broken["text"]


@contextmanager
def code_server(folder: Path, port: int, code: str) -> Iterator[None]:
    """A real `dagster api grpc` serving ``code`` (serving its load error if it fails to load,
    as `dagster code-server start` does) on 127.0.0.1:``port``, until it answers."""
    code_file = folder / f"location_{port}_{abs(hash(code))}.py"
    code_file.write_text(f"import dagster as dg\n\n{code}\n")
    server = subprocess.Popen(  # noqa: S603 - our own venv's dagster
        [DAGSTER, "api", "grpc", "--python-file", str(code_file), "--host", "127.0.0.1"]
        + ["--port", str(port), "--lazy-load-user-code"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not port_open(port):
            assert server.poll() is None and time.monotonic() < deadline, "no code server"
            time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(30)


def test_a_daemon_down_incident_starts_when_its_heartbeat_went_stale(urls, instance) -> None:
    """'FAILING since' says when the daemon stopped beating, not when the watchdog looked."""
    from jobstatus_dagster.watchdog import daemon_sign

    now = datetime.now(UTC)
    last = now - timedelta(hours=2)
    instance.wipe_daemon_heartbeats()
    beat(instance, last.timestamp())
    sign = daemon_sign(instance, now, tolerance_seconds=300)
    assert sign.failing
    assert abs(sign.at - (last + timedelta(seconds=330))) < timedelta(seconds=1)
    assert f"last heartbeat {last:%Y-%m-%d %H:%M:%S}Z" in sign.summary
    beat(instance, (now - timedelta(seconds=200)).timestamp())  # within the tolerance
    assert not daemon_sign(instance, now, tolerance_seconds=300).failing


def test_the_watchdog_reports_a_hung_code_server_before_systemd_ends_it() -> None:
    """A code server that answers Ping but hangs loading its code (ListRepositories; Dagster's
    own timeouts are 60 s for Ping and 180 s for ListRepositories) is reported down well within
    the watchdog unit's TimeoutStartSec: systemd would otherwise end every look before it records
    anything, and a hung code server would never be alerted."""
    from jobstatus_dagster.watchdog import code_server_sign

    limit = unit_timeout_seconds()
    release = threading.Event()

    class Hung(dagster_api_pb2_grpc.DagsterApiServicer):
        def Ping(self, request, context):  # noqa: N802 - the generated name
            return dagster_api_pb2.PingReply(echo=request.echo)

        def ListRepositories(self, request, context):  # noqa: N802
            release.wait(600)  # loading code that never finishes
            context.abort(grpc.StatusCode.UNAVAILABLE, "gone")

    server = grpc.server(ThreadPoolExecutor(4))
    dagster_api_pb2_grpc.add_DagsterApiServicer_to_server(Hung(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    signs = []
    try:
        started = time.monotonic()
        look = threading.Thread(
            target=lambda: signs.append(code_server_sign("127.0.0.1", port, datetime.now(UTC))),
            daemon=True,
        )
        look.start()
        look.join(timeout=limit)
        took = time.monotonic() - started
        assert signs, f"no sign after the unit's TimeoutStartSec={limit}s: systemd ends the look"
        assert signs[0].failing
        assert "not answering within" in signs[0].summary, signs[0].summary
        assert took < limit / 2, f"the code server's look alone took {took:.0f} s of {limit} s"
    finally:
        release.set()
        server.stop(0)


def test_the_watchdog_records_the_daemon_down_when_dagsters_database_is_unreachable(
    urls, receiver: HttpReceiver, tmp_path: Path
) -> None:
    """With the `dagster` database unreachable no daemon can beat, run or alert: the case the
    watchdog exists for. It is the daemon down (with why), the code server's sign is recorded
    too, both are alerted, and the look ends well within the unit's TimeoutStartSec."""
    gone = sa.engine.make_url(to_sqlalchemy_url(urls.dagster)).set(port=free_port())
    dagster_url = gone.set(drivername="postgresql").render_as_string(hide_password=False)
    limit = unit_timeout_seconds()
    started = time.monotonic()
    result = run_cli(
        urls,
        tmp_path / "home",
        "watchdog",
        timeout=120,
        JOBSTATUS_DAGSTER_URL=dagster_url,
        JOBSTATUS_ALERT_WEBHOOK_URL=receiver.url,
        JOBSTATUS_CODE_SERVER_HOST="127.0.0.1",
        JOBSTATUS_CODE_SERVER_PORT=str(free_port()),
    )
    took = time.monotonic() - started
    with engine_scope(urls.jobmanager) as engine, engine.connect() as conn:
        open_now = {s: i for s, i in open_incidents(conn).items() if s.startswith("service:")}
    assert set(open_now) == {DAEMON, CODE_SERVER}, (result.returncode, result.stderr[-600:])
    assert result.returncode == 0, result.stderr[-600:]
    assert "Dagster's database is unreachable" in open_now[DAEMON].summary
    assert states(receiver, DAEMON)[-1:] == ["open"]
    assert took < limit, f"the look took {took:.0f} s: systemd ends it at {limit} s"


def test_an_alert_is_marked_sent_once_a_channel_took_it_before_a_slow_one_is_tried(
    pg_server, receiver: HttpReceiver
) -> None:
    """The webhook takes the alert and the mail server never answers: the alert is marked sent
    before the mail is given up on, so a look ended by its unit's time limit meanwhile (or every
    look, with that mail server) does not send it on the webhook again."""
    fresh = pg_server.migrated()
    silent = socket.socket()  # takes connections (the kernel's backlog), never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    channels = AlertChannels(
        webhook_url=receiver.url,
        smtp_host="127.0.0.1",
        smtp_port=silent.getsockname()[1],
        smtp_to="ops@example.com",
        timeout_seconds=10,
    )
    subject = "service:slow-mail"
    results: list[tuple[int, int]] = []
    try:
        with engine_scope(fresh.jobmanager) as engine:
            with engine.begin() as conn:
                incidents.record_failure(conn, subject, "down on purpose", {}, datetime.now(UTC))
            sending = threading.Thread(
                target=lambda: results.append(send_unsent(engine, channels, watchdog=True)),
                daemon=True,
            )
            sending.start()
            deadline = time.monotonic() + 8  # the mail's greeting is awaited 10 s
            marked = False
            while not marked and time.monotonic() < deadline:
                with engine.connect() as conn:
                    marked = not incidents.unsent(conn, 10, watchdog=True)
                time.sleep(0.1)
            assert marked, "the alert the webhook took is not marked sent while mail is tried"
            assert sending.is_alive(), "the mail was not still being tried"
            assert states(receiver, subject) == ["open"]
            sending.join(30)
            assert results == [(1, 0)]

            # Past the look's time for sending, no alert is started: it waits for the next look.
            with engine.begin() as conn:
                incidents.record_failure(conn, "service:late", "down", {}, datetime.now(UTC))
            webhook = AlertChannels(webhook_url=receiver.url)
            late = time.monotonic()
            assert send_unsent(engine, webhook, watchdog=True, start_before=late) == (0, 1)
            assert states(receiver, "service:late") == []
            assert send_unsent(engine, webhook, watchdog=True) == (1, 0)
            assert states(receiver, "service:late") == ["open"]
    finally:
        silent.close()
