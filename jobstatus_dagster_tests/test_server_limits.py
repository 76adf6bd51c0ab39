"""The limits a production server needs (issue 19), on the real server with the product's
settings (``jobstatus_dagster.serving``): headers over 16 KiB are refused (431), a client that
sends its headers or its body too slowly is answered 408 and let go, and well-behaved clients
meanwhile are served. Timeouts are shortened for the test; what is checked is that the server
closes the connection at all (it used to hold it forever), not how fast."""

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import dagster as dg
import httpx
import pytest

from jobstatus_dagster.api import create_app
from jobstatus_dagster.serving import (
    MAX_HEADER_BYTES,
    LimitedH11Protocol,
    LimitedHttpToolsProtocol,
    server_config,
)
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.serving import serve

TOKEN = "t0k"
# Far above the shortened timeouts: a connection still open then is held for good.
HELD = 30


@pytest.fixture(scope="module", params=[LimitedHttpToolsProtocol, LimitedH11Protocol])
def base_url(request, shop: Shop, instance: dg.DagsterInstance) -> Iterator[str]:
    protocol = type("Short", (request.param,), {"header_timeout": 1.0})
    app = create_app(
        shop.definitions(),
        instance,
        shop.urls.jobmanager,
        shop.urls.logs,
        TOKEN,
        TOKEN,
        body_timeout=1.0,
    )
    with serve(app, http=protocol) as url:
        yield url


def connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=HELD)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it never does."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_headers_over_the_limit_are_refused(base_url: str) -> None:
    with connect(base_url) as sock:
        padding = "x" * (MAX_HEADER_BYTES + 1024)
        request = f"GET /api/health HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {padding}\r\n\r\n"
        sock.sendall(request.encode())
        answer = read_all(sock)
    assert answer.split(b"\r\n", 1)[0] in (
        b"HTTP/1.1 431 Request Header Fields Too Large",
        b"HTTP/1.1 400 Bad Request",  # h11's own limit, which may come first
    ), answer[:200]
    # A large but acceptable header is still served.
    fine = httpx.get(f"{base_url}/api/health", headers={"X-Pad": "y" * (MAX_HEADER_BYTES // 2)})
    assert fine.status_code == 200


def test_headers_that_never_end_are_cut_off_at_the_limit(base_url: str) -> None:
    """A megabyte of header lines without the blank line that ends them: refused for its size
    (431, or h11's 400), not parsed whole and not merely timed out (408)."""
    with connect(base_url) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: a\r\n")
        try:
            for _ in range(256):
                sock.sendall(b"X-Pad: " + b"z" * 4096 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us
        try:
            answer = read_all(sock)
        except ConnectionResetError:  # closed with unread bytes: the answer may be lost
            answer = b"(reset)"
    assert answer.split(b"\r\n", 1)[0] in (
        b"HTTP/1.1 431 Request Header Fields Too Large",
        b"HTTP/1.1 400 Bad Request",
        b"(reset)",
    ), answer[:200]


def test_a_client_trickling_its_headers_is_let_go(base_url: str) -> None:
    with connect(base_url) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: a\r\n")  # and never the blank line
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]


def test_a_connection_that_never_sends_is_closed(base_url: str) -> None:
    with connect(base_url) as sock:
        assert read_all(sock) == b""


def test_a_client_trickling_its_body_gets_408(base_url: str) -> None:
    with connect(base_url) as sock:
        sock.sendall(
            b"POST /api/process-status-updates HTTP/1.1\r\nHost: a\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = read_all(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"not received within" in body


def test_keep_alive_requests_are_served_one_after_another(base_url: str) -> None:
    with httpx.Client(base_url=base_url) as client:
        for _ in range(3):
            assert client.get("/api/health").status_code == 200


def test_the_cli_serves_with_the_limits() -> None:
    config = server_config(object(), "127.0.0.1", 8000)
    assert config.http is LimitedHttpToolsProtocol
    assert config.h11_max_incomplete_event_size == MAX_HEADER_BYTES
    assert config.limit_concurrency and config.timeout_keep_alive
