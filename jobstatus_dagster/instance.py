"""The Dagster instance's one configuration is dagster.yaml, package data beside this module:
`jobstatus` copies it into DAGSTER_HOME for the webserver and the daemon, and instances built in
code (tests, benchmarks, the fault suite) read the same file with their own storage."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import IO, Any

import dagster as dg
import yaml
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._serdes import ConfigurableClassData

from jobstatus_dagster.db import to_sqlalchemy_url

# Package data (pyproject.toml): in the wheel as in the checkout.
PACKAGE_DIR = Path(resources.files("jobstatus_dagster"))
DAGSTER_YAML = PACKAGE_DIR / "dagster.yaml"
# The code location `jobstatus dev` serves (by module name: valid wherever the package imports).
WORKSPACE_YAML = PACKAGE_DIR / "workspace.yaml"
# What an operator installs beside the package (README "Production"): the systemd units, the
# environment file, the Caddyfile and grants.sql; `jobstatus deploy-files DIR` writes them out.
DEPLOY_DIR = PACKAGE_DIR / "deploy"


def instance_overrides(dagster_url: str) -> dict[str, Any]:
    """dagster.yaml with its storage pointed at ``dagster_url`` (psycopg2: see db.py)."""
    settings = yaml.safe_load(DAGSTER_YAML.read_text())
    storage_url = to_sqlalchemy_url(dagster_url, "psycopg2")
    settings["storage"] = {"postgres": {"postgres_url": storage_url}}
    return settings


def write_atomically(path: Path, text: str) -> Path:
    """``text`` into ``path`` through a rename: services starting together never read half a
    file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def grpc_workspace(home: Path, host: str, port: int) -> Path:
    """The workspace of the production topology, written into ``home``: the webserver and the
    daemon load the code location from the one code server at ``host:port`` (`dagster
    code-server start`). With workspace.yaml's `python_module` entry each would start code
    servers of its own, and the daemon a new one every 60 s."""
    from jobstatus_dagster.pipeline.queue import LOCATION_NAME

    entry = {"host": host, "port": port, "location_name": LOCATION_NAME}
    text = yaml.safe_dump({"load_from": [{"grpc_server": entry}]}, sort_keys=False)
    return write_atomically(home / "grpc_workspace.yaml", text)


class TickLogs(LocalComputeLogManager):
    """Keeps what sensors log (`context.log` on a tick) where the UI shows it, under the tick;
    captures nothing of runs, like the NoOpComputeLogManager it replaces (runs log through
    context.log into the event log; capture cost a `tail` process per stream and run, and its
    teardown once held a run 60 s after its last step).

    A tick's file is created at its first line (a tick that logs nothing leaves no file), and
    files older than ``keep_days`` are deleted, at most once an hour per process: Dagster never
    deletes these files, not even with the ticks they belong to.
    """

    def __init__(
        self,
        base_dir: str | None = None,
        keep_days: float = 14,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        home = os.environ.get("DAGSTER_HOME") or tempfile.gettempdir()
        super().__init__(base_dir or str(Path(home) / "tick_logs"), inst_data=inst_data)
        self._keep_seconds = keep_days * 86400
        self._pruned_at = 0.0

    @classmethod
    def config_type(cls) -> dict:
        return {"base_dir": dg.Field(dg.StringSource, is_required=False), "keep_days": float}

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> TickLogs:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        yield CapturedLogContext(log_key=log_key)

    def is_capture_complete(self, log_key: Sequence[str]) -> bool:
        return True

    @contextmanager
    def open_log_stream(self, log_key: Sequence[str], io_type: ComputeIOType) -> Iterator[IO]:
        self._prune()
        stream = _FileAtFirstLine(
            Path(self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type]))
        )
        try:
            yield stream
        finally:
            stream.close()

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at < 3600:
            return
        self._pruned_at = now
        for folder, _, files in os.walk(self._base_dir):
            for name in files:
                path = Path(folder, name)
                with contextlib.suppress(OSError):  # gone meanwhile: another process pruned
                    if path.stat().st_mtime < now - self._keep_seconds:
                        path.unlink()


class _FileAtFirstLine(io.TextIOBase):
    """A text file opened (for appending) at the first write, flushed at every write."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def write(self, text: str) -> int:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("a", encoding="utf-8")
        written = self._file.write(text)
        self._file.flush()
        return written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()
