"""The watchdog: who tells anyone when the alerts themselves are down.

The alerts sensor is evaluated by the Dagster daemon in the code server: with either one down
nothing is alerted, and nothing says so. ``jobstatus watchdog`` runs outside both (a systemd timer,
deploy/systemd/jobstatus-watchdog.timer) and looks at two things:

- ``service:dagster-daemon``: every daemon the instance needs (sensors, schedules, the run queue,
  backfills, run monitoring…) has written a heartbeat to Dagster's storage within the tolerance
  (Dagster's own ``get_daemon_statuses``, errors aside: a daemon that beats is alive);
- ``service:code-server``: the code server answers a gRPC ping, with its code loaded.

Each is an incident in the same ``alert_incidents`` table, sent on the same channels, once when it
opens and once when it clears. The watchdog sends only its own subjects (``service:…``) and the
sensor only the others, so between them no alert goes out twice.

One look fits well inside its unit's TimeoutStartSec (50 s; systemd ends a look that takes
longer, before it has recorded anything): each sign has its own bound (``DAEMON_SIGN_SECONDS``;
``PING_SECONDS`` + ``LIST_REPOSITORIES_SECONDS``, where Dagster's own gRPC timeouts are 60 s and
180 s), the two are taken side by side, and alerts are started only within ``SEND_WITHIN_SECONDS``
of the look's start, each channel with at most ``CHANNEL_TIMEOUT_SECONDS`` per network step.
A sign that does not come within its bound is the service down ("not answering within N s").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.io import incidents
from jobstatus_dagster.io.incidents import WATCHDOG_PREFIX
from jobstatus_dagster.pipeline.alerts import AlertChannels, Sign, apply, send_unsent

DAEMON_SUBJECT = f"{WATCHDOG_PREFIX}dagster-daemon"
CODE_SERVER_SUBJECT = f"{WATCHDOG_PREFIX}code-server"
# Dagster's daemons beat every 30 s; one silent for this long (plus that interval) is down.
DEFAULT_HEARTBEAT_TOLERANCE_SECONDS = 300
# The bounds of one look (the unit's TimeoutStartSec is 50 s, start-up of the process included):
# the heartbeats, read through the instance (Dagster retries an unreachable database for about
# 6 s, and waits on a host that does not answer as long as the TCP stack does);
DAEMON_SIGN_SECONDS = 15
# the code server's two gRPC calls (Dagster's defaults: 60 s and 180 s);
PING_SECONDS = 5
LIST_REPOSITORIES_SECONDS = 10
# and the alerts: none is started later than this after the look began (the others wait for the
# next look), each channel's connect, send and answer at most this long each.
SEND_WITHIN_SECONDS = 25
CHANNEL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class WatchReport:
    signs: list[Sign]
    sent: int
    failed: int
    still_open: list[str]

    def line(self) -> str:
        state = "; ".join(
            f"{sign.subject}: {'DOWN: ' + sign.summary if sign.failing else 'up'}"
            for sign in self.signs
        )
        return f"{state} (alerts sent {self.sent}, failed {self.failed})"


def daemon_sign(instance: dg.DagsterInstance, now: datetime, tolerance_seconds: float) -> Sign:
    """Whether every daemon the instance requires has beaten recently."""
    from dagster._daemon.controller import (
        DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        get_daemon_statuses,
    )

    statuses = get_daemon_statuses(
        instance,
        instance.get_required_daemon_types(),
        curr_time_seconds=now.timestamp(),
        ignore_errors=True,
        heartbeat_tolerance_seconds=tolerance_seconds,
    )
    silent = {
        kind: status for kind, status in statuses.items() if status.required and not status.healthy
    }
    if not silent:
        newest = max(
            (s.last_heartbeat.timestamp for s in statuses.values() if s.last_heartbeat),
            default=now.timestamp(),
        )
        return Sign(
            DAEMON_SUBJECT,
            failing=False,
            at=now,
            by=f"the daemon beat at {datetime.fromtimestamp(newest, UTC):%H:%M:%SZ}",
        )
    beats = {
        kind: status.last_heartbeat.timestamp
        for kind, status in silent.items()
        if status.last_heartbeat is not None
    }
    # It went down when the first of them should have beaten and did not (never beaten: now).
    limit = DEFAULT_HEARTBEAT_INTERVAL_SECONDS + tolerance_seconds
    since = (
        datetime.fromtimestamp(min(beats.values()) + limit, UTC)
        if len(beats) == len(silent)
        else now
    )
    last = (
        f"last heartbeat {datetime.fromtimestamp(max(beats.values()), UTC):%Y-%m-%d %H:%M:%SZ}"
        if beats
        else "no heartbeat at all"
    )
    return Sign(
        DAEMON_SUBJECT,
        failing=True,
        at=min(since, now),
        summary=f"the Dagster daemon is down ({last}; silent: {', '.join(sorted(silent))}):"
        " no sensor, schedule, queued run or alert runs until it is back"
        " (systemctl status jobstatus-daemon)",
        detail={"silent_daemons": sorted(silent), "tolerance_seconds": tolerance_seconds},
    )


def _root_reason(error: BaseException) -> str:
    """The innermost cause, on one line: "too many retries for DB connection" says less than the
    connection refused behind it."""
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    return f"{type(root).__name__}: {' '.join(str(root).split())[:300]}"


def _dagster_unreachable(now: datetime, why: str) -> Sign:
    return Sign(
        DAEMON_SUBJECT,
        failing=True,
        at=now,
        summary=f"the Dagster daemon is down: Dagster's database is unreachable ({why}):"
        " no daemon can beat, and no sensor, schedule, queued run or alert runs until it is back"
        " (JOBSTATUS_DAGSTER_URL; systemctl status jobstatus-daemon)",
        detail={"dagster_database": why},
    )


def daemon_sign_within(
    instance: Callable[[], dg.DagsterInstance],
    now: datetime,
    tolerance_seconds: float,
    seconds: float = DAEMON_SIGN_SECONDS,
) -> Callable[[], Sign]:
    """Start ``daemon_sign`` of the instance ``instance()`` builds, on a thread of its own; the
    function returned waits for it, at most ``seconds`` from now. Dagster's database unreachable
    (the instance cannot be built, or the heartbeats cannot be read, or not within ``seconds``)
    is the daemon down, with why. A reading that hangs is left behind (a daemon thread: the
    process still ends)."""
    outcome: list[Sign | Exception] = []
    deadline = time.monotonic() + seconds

    def read() -> None:
        try:
            outcome.append(daemon_sign(instance(), now, tolerance_seconds))
        except Exception as error:  # noqa: BLE001 - any failure to read is the sign
            outcome.append(error)

    reader = threading.Thread(target=read, name="watchdog-heartbeats", daemon=True)
    reader.start()

    def result() -> Sign:
        reader.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            return _dagster_unreachable(now, f"not answering within {seconds:g} s")
        if isinstance(outcome[0], Exception):
            return _dagster_unreachable(now, _root_reason(outcome[0]))
        return outcome[0]

    return result


def code_server_sign(host: str, port: int, now: datetime) -> Sign:
    """Whether the code server answers a gRPC ping and has its code loaded: `dagster code-server
    start` keeps answering after a reload whose code failed to import, and then no sensor runs."""
    import grpc
    from dagster._grpc.__generated__ import dagster_api_pb2
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._serdes import deserialize_value
    from dagster._utils.error import SerializableErrorInfo

    address = f"{host}:{port}"
    client = DagsterGrpcClient(port=port, host=host)
    # The client's ping() and list_repositories() take no timeout (Dagster's defaults: 60 s and
    # 180 s, past the unit's TimeoutStartSec): the same calls through its _query, with ours.
    calls = (
        ("Ping", dagster_api_pb2.PingRequest, {"echo": "jobstatus-watchdog"}, PING_SECONDS),
        (
            "ListRepositories",
            dagster_api_pb2.ListRepositoriesRequest,
            {},
            LIST_REPOSITORIES_SECONDS,
        ),
    )
    try:
        for method, request, fields, seconds in calls:
            reply = client._query(method, request, timeout=seconds, **fields)  # noqa: SLF001
        loaded = deserialize_value(reply.serialized_list_repositories_response_or_error)
    except Exception as error:  # noqa: BLE001 - any failure to answer is the sign
        cause = error.__cause__
        if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            reason = f"{method}: not answering within {seconds} s"
        else:
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        return Sign(
            CODE_SERVER_SUBJECT,
            failing=True,
            at=now,
            summary=f"the code server at {address} does not answer ({reason}): no sensor is"
            " evaluated and no run starts until it is back (systemctl status jobstatus-code-server)",
            detail={"address": address, "call": method},
        )
    if isinstance(loaded, SerializableErrorInfo):
        root = loaded
        while root.cause is not None:  # DagsterUserCodeLoadError ← what the import raised
            root = root.cause
        reason = " ".join(root.message.split())[:300]
        return Sign(
            CODE_SERVER_SUBJECT,
            failing=True,
            at=now,
            summary=f"the code server at {address} answers but its code did not load ({reason}):"
            " no sensor is evaluated and no run starts until it loads"
            " (journalctl -u jobstatus-code-server; reinstall and `jobstatus reload`)",
            detail={"address": address, "load_error": loaded.cls_name},
        )
    return Sign(CODE_SERVER_SUBJECT, failing=False, at=now, by=f"{address} answered")


def watch(
    instance: Callable[[], dg.DagsterInstance],
    engine: sa.Engine,
    channels: AlertChannels,
    code_server: tuple[str, int],
    tolerance_seconds: float = DEFAULT_HEARTBEAT_TOLERANCE_SECONDS,
    now: datetime | None = None,
    log: logging.Logger | None = None,
) -> WatchReport:
    """One look: record the two signs in ``alert_incidents`` and send what the watchdog owes.
    ``instance`` builds the Dagster instance (on the look's own clock: building it is the first
    thing that fails when Dagster's database is unreachable)."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    # Side by side: the heartbeats on a thread of their own, the code server here.
    daemon = daemon_sign_within(instance, now, tolerance_seconds)
    code = code_server_sign(*code_server, now)
    signs = [daemon(), code]
    with engine.begin() as conn:
        apply(conn, signs)
    sent, failed = send_unsent(
        engine,
        channels.model_copy(
            update={"timeout_seconds": min(channels.timeout_seconds, CHANNEL_TIMEOUT_SECONDS)}
        ),
        log,
        watchdog=True,
        start_before=started + SEND_WITHIN_SECONDS,
    )
    with engine.connect() as conn:
        still_open = sorted(
            s for s in incidents.open_incidents(conn) if s.startswith(WATCHDOG_PREFIX)
        )
    return WatchReport(signs, sent, failed, still_open)
