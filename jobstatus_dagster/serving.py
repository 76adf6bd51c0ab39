"""How the API is served: uvicorn with the limits a production server needs (issue 19).

uvicorn bounds neither the size of a request's headers (with httptools a 1 MB header was
parsed) nor the time a client may take to send them: 300 connections trickling headers were held
for as long as they liked. Its documented extension point, the ``http`` protocol class, gets
both limits here; the time a client may take to send its body is the app's (``api.BodySizeLimit``,
408). A reverse proxy in front should still add its own (README, "Serving it").
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The request line and headers together; nginx's large_client_header_buffers is 4 x 8 KiB.
MAX_HEADER_BYTES = 16 * 1024
# From the connection (or the end of the previous answer) to the end of the headers.
HEADER_TIMEOUT_SECONDS = 10.0
# An idle keep-alive connection is closed after this.
KEEP_ALIVE_SECONDS = 5
# Connections and requests at once; beyond, uvicorn answers 503 at once rather than queue.
MAX_CONCURRENCY = 512
GRACEFUL_SHUTDOWN_SECONDS = 10


class HeaderLimits:
    """Mixed into uvicorn's protocol: close a connection whose request headers are over
    ``MAX_HEADER_BYTES`` (431) or not complete within ``HEADER_TIMEOUT_SECONDS`` (408).

    Both uvicorn protocols start a request cycle (``self.cycle``) when the headers are complete:
    until then, and again once its answer is complete, the connection is reading headers."""

    header_bytes_limit = MAX_HEADER_BYTES
    header_timeout = HEADER_TIMEOUT_SECONDS
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._reading_headers():
            self._header_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self.transport.is_closing():
            self._disarm()
        elif not self._reading_headers():  # headers complete: a request runs
            self._header_bytes = 0
            self._disarm()
        elif self._header_bytes > self.header_bytes_limit:
            self._refuse(b"431 Request Header Fields Too Large")
        elif self._header_timer is None:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._header_bytes = 0  # the next request's headers count afresh, when they come

    def _reading_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _timed_out(self) -> None:
        self._header_timer = None
        if self._reading_headers() and not self.transport.is_closing():
            # An idle keep-alive connection that never started a request closes silently.
            self._refuse(b"408 Request Timeout" if self._header_bytes else None)

    def _refuse(self, status: bytes | None) -> None:
        self._disarm()
        if status is not None:
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            )
        self.transport.close()


class LimitedHttpToolsProtocol(HeaderLimits, HttpToolsProtocol):
    pass


class LimitedH11Protocol(HeaderLimits, H11Protocol):
    pass


def server_config(app: Any, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the API, limits included (``jobstatus api``, ``jobstatus dev``
    and the tests serve it alike)."""
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": LimitedHttpToolsProtocol,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,  # when http=LimitedH11Protocol
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "limit_concurrency": MAX_CONCURRENCY,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "server_header": False,
    }
    return uvicorn.Config(app, **{**settings, **overrides})
