"""The API served for real: uvicorn on 127.0.0.1 in a thread, on a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from jobstatus_dagster.serving import server_config
from jobstatus_testkit.processes import free_port


@contextmanager
def serve(app: FastAPI, timeout: float = 30.0, **settings: Any) -> Iterator[str]:
    """Yields the base URL once the server accepts connections; stops it on exit. Served with
    the product's settings (``jobstatus_dagster.serving``), ``settings`` overriding them."""
    port = free_port()
    config = server_config(app, "127.0.0.1", port, log_level="warning", lifespan="on", **settings)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
