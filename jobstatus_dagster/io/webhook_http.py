"""One webhook POST that no receiver can hold up or blow up.

- A wall-clock deadline for the whole attempt (resolve, connect, TLS, send, answer): every
  socket operation's timeout is what is left of it, so a receiver trickling a byte at a time
  cannot stretch an attempt (httpx's timeouts are per read; a TLS handshake's timeout is a
  deadline for all of it in CPython's ssl); the name is resolved in a thread waited for no
  longer than that. The caller passes the earlier of the attempt's and the run's deadline.
- At most ``max_answer_bytes`` of the answer are read; the rest is never received (the
  connection is closed instead).
- The address connected to is the one checked: the host is resolved here, every address it has
  is checked (``core.webhooks.refusal``) unless private targets are allowed, and the
  connection goes to a checked address, so DNS cannot answer differently between the check and
  the connection. No proxy from the environment is used.

Built on httpcore (httpx's own transport) with a network backend of ours: the deadline and the
address check sit where the sockets are made.
"""

from __future__ import annotations

import base64
import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpcore
import httpx

from jobstatus_dagster.core.webhooks import refusal

MAX_ANSWER_BYTES = 4096


class TargetRefused(Exception):
    """The URL's host is, or resolves to, an address we do not call."""


class DeadlinePassed(Exception):
    """The attempt's time is up."""


@dataclass(frozen=True)
class Answer:
    status_code: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    excerpt: bytes  # at most max_answer_bytes of the body


class _Clock:
    """The current attempt's deadline (time.monotonic), shared by the backend and its streams."""

    def __init__(self) -> None:
        self.deadline = float("inf")

    def timeout(self, requested: float | None, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed(f"deadline passed before {what}")
        return left if requested is None else min(requested, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, clock: _Clock) -> None:
        self._inner = inner
        self._clock = clock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._clock.timeout(timeout, "reading the answer"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._clock.timeout(timeout, "sending"))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._clock.timeout(timeout, "the TLS handshake")
        )
        return _DeadlineStream(inner, self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def resolve(host: str, port: int, timeout: float | None = None) -> list[str]:
    """Every address the host has (an IP literal is itself), in the resolver's order; waits
    at most ``timeout`` for the system resolver (TimeoutError past it)."""
    if timeout is None or _is_ip(host):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
    # getaddrinfo cannot be interrupted: it runs in a thread of its own, left to finish alone.
    answer: queue.Queue = queue.Queue(maxsize=1)

    def lookup() -> None:
        try:
            answer.put(resolve(host, port))
        except Exception as error:  # noqa: BLE001 - handed to the waiting thread
            answer.put(error)

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    try:
        result = answer.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"resolving {host} took longer than the attempt's deadline") from None
    if isinstance(result, Exception):
        raise result
    return result


def refused_target(host: str, port: int, timeout: float = 5.0) -> str | None:
    """Why a host is not a target we call (one of its addresses is refused), or None. A host
    that does not resolve (within ``timeout``) is not refused here: it is checked again, and
    fails, when delivered to."""
    try:
        addresses = resolve(host, port, timeout)
    except (OSError, UnicodeError):  # TimeoutError is an OSError
        return None
    return next((why for a in addresses if (why := refusal(host, a)) is not None), None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, clock: _Clock, allow_private: bool) -> None:
        self._clock = clock
        self._allow_private = allow_private
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port, self._clock.timeout(timeout, "resolving"))
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(str(error)) from None
        except (OSError, UnicodeError) as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from None
        if not self._allow_private:
            for address in addresses:
                why = refusal(host, address)
                if why is not None:
                    raise TargetRefused(f"refused target: {why}")
        error: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,
                    port,
                    self._clock.timeout(timeout, "connecting"),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = failed
                continue
            return _DeadlineStream(stream, self._clock)
        raise error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise TargetRefused("unix sockets are not webhook targets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class DeliveryClient:
    """POSTs for one worker (one subscription at a time): keeps its connections between
    attempts; not shared between threads."""

    def __init__(self, allow_private: bool, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self._clock = _Clock()
        self._max_answer_bytes = max_answer_bytes
        self._pool = httpcore.ConnectionPool(
            network_backend=_GuardedBackend(self._clock, allow_private), retries=0
        )

    def __enter__(self) -> DeliveryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.close()

    def post(self, url: str, body: bytes, headers: Mapping[str, str], deadline: float) -> Answer:
        """POST ``body``; raises on anything that is not an answer (refused target, deadline
        passed, connection errors, an unusable URL)."""
        target = httpx.URL(url)  # httpx.InvalidURL for what the API would refuse today
        if target.scheme not in ("http", "https") or not target.host:
            raise httpx.InvalidURL("not an http(s) URL with a host")
        sent = {**headers, "Content-Length": str(len(body))}
        if target.userinfo:  # user:pass@ in the URL is HTTP Basic auth, as httpx sends it
            credentials = f"{unquote(target.username)}:{unquote(target.password)}"
            sent["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._clock.deadline = deadline
        try:
            left = self._clock.timeout(None, "connecting")
            request_url = httpcore.URL(
                scheme=target.raw_scheme,
                host=target.raw_host,
                port=target.port,
                target=target.raw_path,
            )
            timeouts = {"connect": left, "read": left, "write": left, "pool": left}
            with self._pool.stream(
                "POST",
                request_url,
                headers=list(sent.items()),
                content=body,
                extensions={"timeout": timeouts},
            ) as response:
                excerpt = b""
                for chunk in response.iter_stream():
                    excerpt += chunk
                    if len(excerpt) >= self._max_answer_bytes:
                        break  # leaving unread body closes the connection: nothing more is read
                return Answer(
                    response.status,
                    {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers},
                    excerpt[: self._max_answer_bytes],
                )
        finally:
            self._clock.deadline = float("inf")
