"""The HTTP API (docs/rules.md §6, Surfaces): trigger processing and read a job's status over HTTP.

Processing requests are Dagster runs: the API plans the windows past the markers as the sensor
would, puts a run per window into the instance's run queue (tagged ``jobstatus/trigger=api``) and
waits for them up to the request's ``wait``. The queue's one-run-per-source limit, run monitoring
and the run history apply to them as to every other run; ``force`` is a partition backfill over
the marker ranges, on Dagster's Backfills page. The HTTP layer only adds what a network caller
needs: authentication, input limits, and status codes that say what happened.

Status codes:

- 200: done. Processing bodies carry the counts of the finished runs and the runs themselves
  (``runs``; empty when nothing was new). ``GET /api/health`` answers 200 only when every
  database is reachable, else 503.
- 202: accepted but not finished within ``wait`` (a long backlog, a busy source, or no daemon
  running for the instance, which ``daemon_running`` says). The body lists the runs (and the
  backfill); follow each with ``GET /api/runs/{run_id}``.
- 401: a request without ``Authorization: Bearer <token>`` or with a wrong token
  (``WWW-Authenticate: Bearer``). Writes need the write token; reads (job status, runs, the
  feed, job lists) the read token or the write token, unless reads are deliberately public.
- 503 on reads: no read token configured (``JOBSTATUS_API_READ_TOKEN`` unset) and reads not
  declared public (``JOBSTATUS_API_PUBLIC_READS=true``). ``/api/health`` stays open for probes.
- 503 on writes: no token configured (``JOBSTATUS_API_TOKEN`` unset) - writes stay closed rather
  than open to anyone. Also 503 when a database or the Dagster storage is unreachable.
- 404: unknown job or run. 408: a body not received whole within 30 s. 413: body over 64 KiB. 422: anything malformed (wrong types, unknown
  fields or ``source``, non-JSON, a job id that is not ``<digits>_<digits>``). 400: a JSON body
  that is not UTF-8 (UTF-16 or UTF-32 included), or an unreadable Content-Length.
- 502: a run failed (e.g. a database error inside an op). The body names the failed run and its
  error, and lists the request's runs: other windows are committed, the marker stays before the
  failed one, and repeating the request resumes there (R18). A failed run is the upstream's
  failure, not a bug of the API, hence 502 rather than 500.
- 500: only for an unexpected exception, as a JSON body without a traceback.
"""

from __future__ import annotations

import hmac
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
import dagster as dg
import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobstatus_dagster import api_integration
from jobstatus_dagster.core.plan import PRINT_OS, SCANNER
from jobstatus_dagster.db import to_sqlalchemy_url
from jobstatus_dagster.io.feed import read_as_of
from jobstatus_dagster.io.sources import read_marker
from jobstatus_dagster.io.status import read_job_status
from jobstatus_dagster.pipeline import queue
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, TRIGGER_TAG
from jobstatus_dagster.serving import MAX_HEADER_BYTES
from jobstatus_dagster.source import SOURCE_NAMES

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT_SECONDS = 30.0  # the whole body, from the end of the headers
TRIGGER = "api"
# R4: a job id is two digit groups; anything else never reaches SQL.
JOB_ID_PATTERN = r"^[0-9]{1,20}_[0-9]{1,20}$"
JOB_ID_MAX_LENGTH = 41
MAX_UPDATE_ID = 2**63 - 1  # update_id is BIGSERIAL
RUN_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
DEFAULT_WAIT_SECONDS = 60
MAX_WAIT_SECONDS = 600

logger = logging.getLogger(__name__)
Gone = Callable[[], Awaitable[bool]]  # whether the client hung up

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="Writes need `Authorization: Bearer <JOBSTATUS_API_TOKEN>`; reads that token or"
    " `JOBSTATUS_API_READ_TOKEN`.",
)


# ----- bodies ------------------------------------------------------------------------------
class StrictBody(BaseModel):
    """Request bodies: exact types (no "true" for true, no 1 for a bool) and no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _wait_field() -> Any:
    return Field(
        DEFAULT_WAIT_SECONDS,
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for the runs to finish; after that the answer is 202 with"
        " the runs to follow.",
    )


class ProcessPrintOsRequest(StrictBody):
    force: bool = Field(
        False,
        description="Process every print-OS event again from the first one, as a backfill over"
        " the marker ranges (it shows on Dagster's Backfills page). Safe to repeat: nothing is"
        " written twice and the marker never goes back.",
    )
    wait: int = _wait_field()


class ProcessStatusUpdatesRequest(StrictBody):
    source: Literal["both", "print_os", "scanner"] = "both"
    wait: int = _wait_field()


class RunSummary(BaseModel):
    run_id: str
    window: str = Field(description="source and marker range, `print_os:100-114`")
    status: str = Field(description="Dagster's run status: QUEUED, STARTED, SUCCESS, FAILURE, …")
    success: bool


class ProcessPrintOsResponse(BaseModel):
    processed_count: int = Field(description="source rows read by the runs")
    jobs_updated: int = Field(description="jobs rows whose operations changed")
    last_marker: int = Field(description="the print-OS marker after processing")
    runs: list[RunSummary]
    backfill_id: str | None = Field(None, description="the backfill, for `force`")


class ProcessStatusUpdatesResponse(BaseModel):
    print_os_processed: int
    scanner_processed: int
    jobs_updated: int
    runs: list[RunSummary]


class AcceptedBody(BaseModel):
    detail: str
    runs: list[RunSummary] = Field(description="follow each with GET /api/runs/{run_id}")
    backfill_id: str | None = None
    daemon_running: bool = Field(
        description="false: no Dagster daemon serves the instance, so nothing starts until one"
        " does (`dagster-daemon run`, or `jobstatus dev`)"
    )


class RunStatusResponse(BaseModel):
    run_id: str
    status: str
    finished: bool
    source: str | None
    window: str
    trigger: str | None
    counts: dict[str, int | float | str] = Field(
        description="what the run wrote (rows read, jobs updated, marker after, …), once it did"
    )
    error: str | None


class UpdateRecord(BaseModel):
    """One audit row: what one source row said about one job version's operation."""

    update_id: int
    operation_type: str
    status: str | None
    source_type: str
    source_id: int
    version_tag: str
    updated_at: datetime | None = Field(description="when it happened at the press or scanner")
    processed_at: datetime
    printed_count: int | None
    aborted_count: int | None
    total_count: int | None
    applied: bool
    notes: str | None
    run_id: str | None
    withdrawn_at: datetime | None = Field(
        None, description="set when re-processing no longer attributes this row to the job version"
    )


class VersionOperation(BaseModel):
    version_tag: str | None = Field(description="null where the shop's row has none")
    operation_id: str | None
    operation: str | None
    status: str | None
    completed_at: datetime | None
    completed_by: str | None
    source_id: int | None
    notes: str | None


class VersionStatus(BaseModel):
    """A job version's print state (printed, aborted, total files) and its job_operations rows."""

    version_tag: str | None = Field(description="null for the shop's rows with no version tag")
    status: str | None
    notes: str | None
    printed: int | None = None
    aborted: int | None = None
    total: int | None = None
    operations: list[VersionOperation]


class JobStatusResponse(BaseModel):
    job_id: str
    in_jobs_table: bool
    current_status: dict[str, Any]
    versions: list[VersionStatus]
    update_history: list[UpdateRecord] = Field(description="newest first")
    next_before: int | None = Field(
        description="pass as `before` for the next (older) page; null on the last page"
    )
    as_of: dict[str, api_integration.SourceFreshness] = Field(
        description=api_integration.AS_OF_DESCRIPTION
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="'ok' or the error class, per dependency")


class ErrorBody(BaseModel):
    detail: str


class RunFailedBody(ErrorBody):
    source: str
    run_id: str
    window: str
    error: str | None
    runs: list[RunSummary]


# ----- errors as responses -----------------------------------------------------------------
class RunFailed(Exception):
    def __init__(self, source: str, failed: RunSummary, error: str | None, runs: list) -> None:
        super().__init__(source, failed.run_id)
        self.source, self.failed, self.error, self.runs = source, failed, error, runs


async def _run_failed(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunFailed)
    failed = exc.failed
    body = RunFailedBody(
        detail=f"run {failed.run_id} for {failed.window} failed; other windows are committed",
        source=exc.source,
        run_id=failed.run_id,
        window=failed.window,
        error=exc.error,
        runs=exc.runs,
    )
    return JSONResponse(body.model_dump(), status_code=502)


async def _validation_failed(_: Request, exc: Exception) -> JSONResponse:
    """422 without echoing the input back (it may be large, binary or not UTF-8)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"type": str(e.get("type")), "loc": list(e.get("loc", ())), "msg": str(e.get("msg"))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def _client_gone(_: Request, exc: Exception) -> Response:
    """Nobody is left to read it; 499 ("client closed request") is what the access log shows."""
    return Response(status_code=499)


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"database unavailable ({type(exc).__name__})"}, status_code=503)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


def header_bytes(scope: Scope) -> int:
    """About what the request line and headers took on the wire."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def read_as_json(scope: Scope) -> bool:
    """Whether the body may be parsed as JSON: a JSON Content-Type, or none (FastAPI before
    strict content types parsed a body without one, or with an empty one, as JSON)."""
    ctype = Headers(scope=scope).get("content-type")
    if not ctype:
        return True
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def is_utf8(body: bytes) -> bool:
    """UTF-8, and no NUL byte: JSON text never holds one raw, and NULs are how Python's json
    tells UTF-16 and UTF-32 without a byte-order mark from UTF-8."""
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class BodySizeLimit:
    """Before any endpoint sees a request: 431 for a request line and headers over
    ``MAX_HEADER_BYTES``; 413 for a body over ``max_bytes``, by Content-Length and by the bytes
    actually received (chunked bodies have no Content-Length); 408 for a body not received whole
    within ``timeout`` seconds (a client trickling it holds no request open); 400 for a JSON body
    that is not UTF-8 (RFC 8259: Python's json would otherwise guess UTF-16 or UTF-32)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_SECONDS
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if header_bytes(scope) > MAX_HEADER_BYTES:  # complete headers; serving.py, incomplete
            detail = f"request line and headers larger than {MAX_HEADER_BYTES} bytes"
            await self._refuse(scope, receive, send, 431, detail, close=True)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            await self._refuse(scope, receive, send, 400, "invalid Content-Length")
            return
        if declared is not None and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, self._too_large, close=True)
            return
        body = bytearray()
        with anyio.move_on_after(self.timeout) as reading:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_bytes:
                    await self._refuse(scope, receive, send, 413, self._too_large, close=True)
                    return
                if not message.get("more_body", False):
                    break
        if reading.cancelled_caught:
            detail = f"request body not received within {self.timeout:g} s"
            await self._refuse(scope, receive, send, 408, detail, close=True)
            return
        if body and read_as_json(scope) and not is_utf8(bytes(body)):
            await self._refuse(scope, receive, send, 400, "request body is not UTF-8 JSON")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @property
    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    @staticmethod
    async def _refuse(
        scope: Scope, receive: Receive, send: Send, status: int, detail: str, close: bool = False
    ) -> None:
        headers = {"Connection": "close"} if close else None
        await JSONResponse({"detail": detail}, status_code=status, headers=headers)(
            scope, receive, send
        )


# ----- processing --------------------------------------------------------------------------
class Accepted(Exception):  # noqa: N818 - an answer, not an error
    """Runs still queued or running when the request's wait ran out: 202."""

    def __init__(self, body: AcceptedBody) -> None:
        super().__init__(body.detail)
        self.body = body


async def _accepted(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Accepted)
    return JSONResponse(exc.body.model_dump(), status_code=202)


def _summary(run: dg.DagsterRun) -> RunSummary:
    return RunSummary(
        run_id=run.run_id,
        window=queue.run_window(run),
        status=run.status.value,
        success=run.status == dg.DagsterRunStatus.SUCCESS,
    )


class Processor:
    """What the processing endpoints do, outside HTTP: submit, wait, read the outcome."""

    def __init__(
        self, defs: dg.Definitions, instance: dg.DagsterInstance, jobmanager: sa.Engine
    ) -> None:
        self.defs = defs
        self.instance = instance
        self.jobmanager = jobmanager
        self.watcher = queue.RunWatcher(instance)

    async def process(
        self, sources: tuple[str, ...], wait: float, gone: Gone | None = None
    ) -> dict[str, list[dg.DagsterRun]]:
        """A queued run per window past each source's marker; the finished runs per source."""
        submitted = await run_in_threadpool(self._submit, sources)
        run_ids = [run_id for sub in submitted.values() for run_id in sub.run_ids]
        _, runs = await self.watcher.wait_for_runs(run_ids, wait, gone)
        await run_in_threadpool(self._check, sources[0], runs, None)
        return {
            source: [run for run in runs if run.run_id in sub.windows]
            for source, sub in submitted.items()
        }

    def _submit(self, sources: tuple[str, ...]) -> dict[str, queue.Submitted]:
        queue.ensure_pools(self.instance)
        return {s: queue.submit_source(self.defs, self.instance, s, TRIGGER) for s in sources}

    async def backfill(
        self, source: str, wait: float, gone: Gone | None = None
    ) -> tuple[str | None, list[dg.DagsterRun]]:
        """A partition backfill over every marker range of the source (or the one already in
        flight over them); its finished runs."""
        backfill_id = await run_in_threadpool(self._submit_backfill, source)
        if backfill_id is None:
            return None, []
        done, runs = await self.watcher.wait_for_backfill(backfill_id, wait, gone)
        if not done:
            await run_in_threadpool(self._accepted, runs, backfill_id)
        await run_in_threadpool(self._check, source, runs, backfill_id)
        return backfill_id, runs

    def _submit_backfill(self, source: str) -> str | None:
        queue.ensure_pools(self.instance)
        return queue.submit_whole_source_backfill(self.defs, self.instance, source, TRIGGER)

    def _check(self, source: str, runs: list[dg.DagsterRun], backfill_id: str | None) -> None:
        if not all(run.status in queue.FINISHED for run in runs):
            self._accepted(runs, backfill_id)
        failed = next((run for run in runs if run.status != dg.DagsterRunStatus.SUCCESS), None)
        if failed is not None:
            raise RunFailed(
                failed.tags.get(SOURCE_TAG, source),
                _summary(failed),
                queue.run_error(self.instance, failed.run_id),
                [_summary(run) for run in runs],
            )

    def _accepted(self, runs: list[dg.DagsterRun], backfill_id: str | None) -> None:
        serving = queue.daemon_serves(self.instance)
        waiting = "still queued or running" if serving else "queued"
        why = "" if serving else ": no Dagster daemon serves the instance, they start when one does"
        raise Accepted(
            AcceptedBody(
                detail=f"{len(runs)} run(s) {waiting}{why}",
                runs=[_summary(run) for run in runs],
                backfill_id=backfill_id,
                daemon_running=serving,
            )
        )

    def counts(self, runs: list[dg.DagsterRun], key: str) -> int:
        return sum(int(queue.run_counts(self.instance, run.run_id).get(key, 0)) for run in runs)

    def marker(self, source: str) -> int:
        with self.jobmanager.connect() as conn:
            return read_marker(conn, source)

    def run_status(self, run_id: str) -> RunStatusResponse | None:
        run = self.instance.get_run_by_id(run_id)
        if run is None:
            return None
        finished = run.status in queue.FINISHED
        failed = run.status == dg.DagsterRunStatus.FAILURE
        return RunStatusResponse(
            run_id=run.run_id,
            status=run.status.value,
            finished=finished,
            source=run.tags.get(SOURCE_TAG),
            window=queue.run_window(run),
            trigger=run.tags.get(TRIGGER_TAG),
            counts=queue.run_counts(self.instance, run_id) if finished else {},
            error=queue.run_error(self.instance, run_id) if failed else None,
        )


# The instance's storage connections as dagster-webserver holds them (its defaults): a pooled
# connection per storage (pool_size 1, up to 20 more under load, recycled hourly) instead of
# dagster-postgres's default NullPool, which opens a Postgres session per query; statements
# time out after 15 s. Once per instance: each call replaces the storages' engines.
STORAGE_STATEMENT_TIMEOUT_MS = 15_000
STORAGE_POOL_RECYCLE_SECONDS = 3600
STORAGE_POOL_MAX_OVERFLOW = 20
_pooled: weakref.WeakSet[dg.DagsterInstance] = weakref.WeakSet()
_pooled_lock = threading.Lock()


def pool_storage_connections(instance: dg.DagsterInstance) -> None:
    """Pool the instance's storage connections (``DagsterInstance.optimize_for_webserver``)."""
    with _pooled_lock:
        if instance in _pooled:
            return
        instance.optimize_for_webserver(
            statement_timeout=STORAGE_STATEMENT_TIMEOUT_MS,
            pool_recycle=STORAGE_POOL_RECYCLE_SECONDS,
            max_overflow=STORAGE_POOL_MAX_OVERFLOW,
        )
        _pooled.add(instance)


def _engine(libpq_url: str) -> sa.Engine:
    # A short connect timeout, so /api/health answers promptly when a server is down.
    return sa.create_engine(
        to_sqlalchemy_url(libpq_url), pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )


# ----- the app -----------------------------------------------------------------------------
ERRORS_READ: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    404: {"model": ErrorBody, "description": "unknown job"},
    503: {"model": ErrorBody, "description": "reads closed (no read token), or a database down"},
}
ERRORS_WRITE: dict[int | str, dict[str, Any]] = {
    202: {"model": AcceptedBody, "description": "runs not finished within `wait`: follow them"},
    400: {"model": ErrorBody, "description": "body not UTF-8, or an unreadable Content-Length"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    408: {"model": ErrorBody, "description": "body not received whole within 30 s"},
    413: {"model": ErrorBody, "description": "body over 64 KiB"},
    502: {"model": RunFailedBody, "description": "a run failed"},
    503: {"model": ErrorBody, "description": "no API token configured, or a database is down"},
}


def create_app(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    jobmanager_url: str,
    logs_url: str,
    token: str | None,
    read_token: str | None = None,
    public_reads: bool = False,
    body_timeout: float = BODY_TIMEOUT_SECONDS,
    webhook_allow_private: bool = False,
    webhook_secret_overlap_seconds: float = 86_400.0,
) -> FastAPI:
    """The API over one code location's definitions and one Dagster instance.

    ``token`` None (or empty) closes the write endpoints (503) instead of opening them;
    ``read_token`` None closes the reads likewise, unless ``public_reads`` opens them to anyone.
    ``webhook_allow_private`` accepts loopback and private webhook targets (tests, `jobstatus
    dev`); ``webhook_secret_overlap_seconds`` is how long a rotated-out secret still signs.
    """
    jobmanager = _engine(jobmanager_url)
    logs = _engine(logs_url)
    pool_storage_connections(instance)
    processor = Processor(defs, instance, jobmanager)
    expected = token.encode() if token else None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        jobmanager.dispose()
        logs.dispose()

    app = FastAPI(
        title="jobstatus",
        version="1",
        description="Print-OS events and finishing scans → job status. Processing requests are"
        " Dagster runs, tagged `jobstatus/trigger=api`, in the run queue and the run history.",
        lifespan=lifespan,
    )
    app.state.processor = processor  # its run watcher, for the tests and bench/
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES, timeout=body_timeout)
    app.add_exception_handler(Accepted, _accepted)
    app.add_exception_handler(RunFailed, _run_failed)
    app.add_exception_handler(queue.ClientGone, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(sa.exc.OperationalError, _database_unavailable)
    app.add_exception_handler(sa.exc.InterfaceError, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if expected is None:
            raise HTTPException(503, "API token not configured (JOBSTATUS_API_TOKEN)")
        given = credentials.credentials.encode() if credentials is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    expected_read = read_token.encode() if read_token else None

    def require_read_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None and public_reads:
            return
        if expected_read is None and not public_reads:
            raise HTTPException(
                503,
                "reads are closed: no read token configured (JOBSTATUS_API_READ_TOKEN), and"
                " reads are not public (JOBSTATUS_API_PUBLIC_READS)",
            )
        given = credentials.credentials.encode() if credentials is not None else b""
        # Both compared, in constant time, whichever matches: the write token also reads.
        as_reader = hmac.compare_digest(given, expected_read or b"\0")
        as_writer = hmac.compare_digest(given, expected or b"\0")
        if not given or not (as_reader or as_writer):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, plus the header every 401 carries (on any endpoint, new ones
        included): FastAPI cannot see headers an ``HTTPException`` of a dependency sets."""
        if app.openapi_schema is None:
            for methods in default_openapi()["paths"].values():
                for operation in methods.values():
                    unauthorized = operation.get("responses", {}).get("401")
                    if unauthorized is not None:
                        unauthorized.setdefault("headers", {}).update(
                            api_integration.WWW_AUTHENTICATE
                        )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    write = [Depends(require_token)]
    read = [Depends(require_read_token)]
    app.include_router(
        api_integration.build_router(
            jobmanager,
            logs,
            read,
            write,
            webhook_allow_private=webhook_allow_private,
            webhook_secret_overlap_seconds=webhook_secret_overlap_seconds,
        )
    )

    @app.post(
        "/api/process-print-os",
        dependencies=write,
        responses=ERRORS_WRITE,
        summary="Process print-OS events past the marker (force: all of them again)",
    )
    async def process_print_os(
        client: Request,
        request: Annotated[ProcessPrintOsRequest, Body()] = ProcessPrintOsRequest(),  # noqa: B008
    ) -> ProcessPrintOsResponse:
        # Async: a request waiting for its runs holds no worker thread (reads go on meanwhile),
        # and stops waiting when its client hangs up.
        gone = client.is_disconnected
        if request.force:
            backfill_id, runs = await processor.backfill(PRINT_OS, request.wait, gone)
        else:
            processed = await processor.process((PRINT_OS,), request.wait, gone)
            backfill_id, runs = None, processed[PRINT_OS]
        return await run_in_threadpool(print_os_answer, runs, backfill_id)

    def print_os_answer(
        runs: list[dg.DagsterRun], backfill_id: str | None
    ) -> ProcessPrintOsResponse:
        return ProcessPrintOsResponse(
            processed_count=processor.counts(runs, "rows_read"),
            jobs_updated=processor.counts(runs, "jobs_updated"),
            last_marker=processor.marker(PRINT_OS),
            runs=[_summary(run) for run in runs],
            backfill_id=backfill_id,
        )

    @app.post(
        "/api/process-status-updates",
        dependencies=write,
        responses=ERRORS_WRITE,
        summary="Process print-OS events and/or scans past their markers",
    )
    async def process_status_updates(
        client: Request,
        request: Annotated[ProcessStatusUpdatesRequest, Body()] = ProcessStatusUpdatesRequest(),  # noqa: B008
    ) -> ProcessStatusUpdatesResponse:
        sources = SOURCE_NAMES if request.source == "both" else (request.source,)
        runs = await processor.process(sources, request.wait, client.is_disconnected)
        return await run_in_threadpool(status_updates_answer, sources, runs)

    def status_updates_answer(
        sources: tuple[str, ...], runs: dict[str, list[dg.DagsterRun]]
    ) -> ProcessStatusUpdatesResponse:
        return ProcessStatusUpdatesResponse(
            print_os_processed=processor.counts(runs.get(PRINT_OS, []), "rows_read"),
            scanner_processed=processor.counts(runs.get(SCANNER, []), "rows_read"),
            jobs_updated=sum(processor.counts(r, "jobs_updated") for r in runs.values()),
            runs=[_summary(run) for source in sources for run in runs[source]],
        )

    @app.get(
        "/api/runs/{run_id}",
        dependencies=read,
        responses={**ERRORS_READ, 404: {"model": ErrorBody, "description": "unknown run"}},
        summary="A processing run: its status, and what it wrote once it finished",
    )
    def run_status(
        run_id: Annotated[str, Path(pattern=RUN_ID_PATTERN, description="a Dagster run id")],
    ) -> RunStatusResponse:
        status = processor.run_status(run_id)
        if status is None:
            raise HTTPException(404, f"unknown run {run_id}")
        return status

    @app.get(
        "/api/job-status/{job_id}",
        dependencies=read,
        responses=ERRORS_READ,
        summary="A job's current operations, print state per version and audit history",
    )
    def job_status(
        job_id: Annotated[
            str,
            Path(
                pattern=JOB_ID_PATTERN,
                max_length=JOB_ID_MAX_LENGTH,
                description="`<digits>_<digits>`",
                examples=["4604_5889"],
            ),
        ],
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[
            int | None, Query(ge=1, le=MAX_UPDATE_ID, description="update_id to page below")
        ] = None,
    ) -> JobStatusResponse:
        status = read_job_status(jobmanager, logs, job_id, limit=limit, before=before)
        if status is None:
            raise HTTPException(404, f"unknown job {job_id}")
        with jobmanager.connect() as conn:
            status["as_of"] = read_as_of(conn)
        return JobStatusResponse.model_validate(status)

    @app.get(
        "/api/health",
        responses={503: {"model": HealthResponse, "description": "a dependency is unreachable"}},
        summary="Reachability of the jobmanager and logs databases and the Dagster instance",
    )
    def health(response: Response) -> HealthResponse:
        checks = {
            "jobmanager": _check(lambda: _select_one(jobmanager)),
            "logs": _check(lambda: _select_one(logs)),
            "dagster": _check(lambda: instance.get_run_records(limit=1)),
        }
        ok = all(value == "ok" for value in checks.values())
        if not ok:
            response.status_code = 503
        return HealthResponse(status="ok" if ok else "unavailable", checks=checks)

    return app


def _select_one(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as error:  # noqa: BLE001 - any failure means "unreachable" here
        return type(error).__name__
    return "ok"
