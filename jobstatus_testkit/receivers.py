"""Real receivers on 127.0.0.1 for what the product sends out: an HTTP endpoint that keeps the
JSON bodies POSTed to it (and can be told to answer 500), and a minimal SMTP server that keeps
the mails it is given. Each serves on a thread until its context ends."""

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HttpReceiver:
    url: str = ""
    bodies: list[dict] = field(default_factory=list)
    failures_left: int = 0  # answer 500 to this many POSTs first
    attempts: int = 0


@contextmanager
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                receiver.attempts += 1
                fail = receiver.failures_left > 0
                if fail:
                    receiver.failures_left -= 1
                else:
                    receiver.bodies.append(json.loads(body))
            self.send_response(500 if fail else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class SmtpReceiver:
    host: str = "127.0.0.1"
    port: int = 0
    mails: list[Message] = field(default_factory=list)


@contextmanager
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """Enough of RFC 5321 for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""
    receiver = SmtpReceiver()

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")

        def handle(self) -> None:
            self.reply("220 127.0.0.1 test SMTP")
            while line := self.rfile.readline():
                verb = line.decode().strip().split(" ")[0].upper()
                if verb == "EHLO":
                    self.reply("250-127.0.0.1")
                    self.reply("250 8BITMIME")
                elif verb == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    data = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    receiver.mails.append(message_from_bytes(data))
                    self.reply("250 queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:  # HELO, MAIL, RCPT, RSET, NOOP
                    self.reply("250 ok")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
