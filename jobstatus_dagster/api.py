"""The HTTP API (plan §7, SPEC §6): trigger processing and read a job's status over HTTP.

Processing requests run the same Dagster jobs as the sensors, in this process but on the shared
instance and tagged ``jobstatus/trigger=api``, so every request is a run in the UI's history and
goes through the same windows, locks and idempotent writes (R17-R19). The HTTP layer only adds
what a network caller needs: authentication, input limits, one request per source, and status
codes that say what happened.

Status codes:

- 200: done. Processing bodies carry the counts and the runs made (``runs``; empty when nothing
  was new). ``GET /api/health`` answers 200 only when every database is reachable, else 503.
- 401: a request without ``Authorization: Bearer <token>`` or with a wrong token
  (``WWW-Authenticate: Bearer``). Writes need the write token; reads (job status, the feed, job
  lists) the read token or the write token, unless reads are deliberately public.
- 503 on reads: no read token configured (``JOBSTATUS_API_READ_TOKEN`` unset) and reads not
  declared public (``JOBSTATUS_API_PUBLIC_READS=true``). ``/api/health`` stays open for probes.
- 503 on writes: no token configured (``JOBSTATUS_API_TOKEN`` unset) - writes stay closed rather
  than open to anyone. Also 503 when a database or the Dagster storage is unreachable.
- 404: unknown job. 409: a run for that source is in flight (in the instance, from the daemon,
  the CLI or another API process) or another request of this process holds the source; the body
  names the source and, when known, the run. An in-flight run whose worker is gone (a killed
  process) is first marked failed instead (``pipeline/stale_runs.py``); the response then names
  it in the ``Jobstatus-Failed-Stale-Runs`` header. 413: body over 64 KiB. 422: anything malformed
  (wrong types, unknown fields or ``source``, non-JSON, a job id that is not ``<digits>_<digits>``).
  400: a JSON body that is not UTF-8 (FastAPI's own answer), or an unreadable Content-Length.
- 502: a Dagster run failed (e.g. a database error inside an op). The body names the failed run
  and its error, and lists the runs made before it: those windows are committed, the marker
  stays before the failed one, and repeating the request resumes there (R18). A failed run is
  the upstream's failure, not a bug of the API, hence 502 rather than 500.
- 500: only for an unexpected exception, as a JSON body without a traceback.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import dagster as dg
import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response
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
from jobstatus_dagster.io.sources import chunk_reader, engine_marker_bounds, read_marker
from jobstatus_dagster.io.status import read_job_status
from jobstatus_dagster.pipeline.ops import SOURCE_TAG
from jobstatus_dagster.pipeline.resources import ProcessingSettings
from jobstatus_dagster.pipeline.runner import (
    RunOutcome,
    SourceOutcome,
    execute_window,
    process_source,
)
from jobstatus_dagster.pipeline.stale_runs import StaleRun, fail_stale_runs
from jobstatus_dagster.pipeline.windows import IN_FLIGHT, backfill_windows
from jobstatus_dagster.source import SOURCE_NAMES, source_named

MAX_BODY_BYTES = 64 * 1024
TRIGGER = "api"
# R4: a job id is two digit groups; anything else never reaches SQL.
JOB_ID_PATTERN = r"^[0-9]{1,20}_[0-9]{1,20}$"
JOB_ID_MAX_LENGTH = 41
MAX_UPDATE_ID = 2**63 - 1  # update_id is BIGSERIAL
STALE_RUNS_HEADER = "Jobstatus-Failed-Stale-Runs"

logger = logging.getLogger(__name__)

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


class ProcessPrintOsRequest(StrictBody):
    force: bool = Field(
        False,
        description="Re-process every print-OS row from the start (a backfill, R21): idempotent,"
        " never lowers the marker; then process anything new as usual.",
    )


class ProcessStatusUpdatesRequest(StrictBody):
    source: Literal["both", "print_os", "scanner"] = "both"


class RunSummary(BaseModel):
    run_id: str
    window: str
    success: bool


class ProcessPrintOsResponse(BaseModel):
    processed_count: int = Field(description="source rows read by the runs")
    jobs_updated: int = Field(description="jobs rows whose operations changed")
    last_marker: int = Field(description="the print-OS marker after processing")
    runs: list[RunSummary]


class ProcessStatusUpdatesResponse(BaseModel):
    print_os_processed: int
    scanner_processed: int
    jobs_updated: int
    runs: list[RunSummary]


class UpdateRecord(BaseModel):
    """One audit row (R17)."""

    update_id: int
    operation_type: str
    status: str | None
    source_type: str
    source_id: int
    version_tag: str
    updated_at: datetime | None = Field(description="event time (R14)")
    processed_at: datetime
    printed_count: int | None
    aborted_count: int | None
    total_count: int | None
    applied: bool
    notes: str | None
    run_id: str | None
    withdrawn_at: datetime | None = Field(
        None, description="set when re-processing no longer attributes this row (R22b)"
    )


class VersionOperation(BaseModel):
    version_tag: str
    operation_id: str | None
    operation: str | None
    status: str | None
    completed_at: datetime | None
    completed_by: str | None
    source_id: int | None
    notes: str | None


class VersionStatus(BaseModel):
    """A job version's print state (R11) and its job_operations rows."""

    version_tag: str
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


class BusyBody(ErrorBody):
    source: str
    run_id: str | None


class RunFailedBody(ErrorBody):
    source: str
    run_id: str
    window: str
    error: str | None
    runs: list[RunSummary]


# ----- errors as responses -----------------------------------------------------------------
class SourceBusy(Exception):
    def __init__(self, source: str, run_id: str | None) -> None:
        super().__init__(source, run_id)
        self.source, self.run_id = source, run_id


class RunFailed(Exception):
    def __init__(self, source: str, failed: RunOutcome, runs: list[RunOutcome]) -> None:
        super().__init__(source, failed.run_id)
        self.source, self.failed, self.runs = source, failed, runs


def _summaries(runs: list[RunOutcome]) -> list[RunSummary]:
    return [RunSummary(run_id=r.run_id, window=r.window, success=r.success) for r in runs]


async def _busy(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SourceBusy)
    held_by = f"run {exc.run_id} is in flight" if exc.run_id else "another request is processing"
    body = BusyBody(detail=f"{exc.source} is busy: {held_by}", source=exc.source, run_id=exc.run_id)
    return JSONResponse(body.model_dump(), status_code=409)


async def _run_failed(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunFailed)
    failed = exc.failed
    body = RunFailedBody(
        detail=f"run {failed.run_id} for {failed.window} failed; earlier windows are committed",
        source=exc.source,
        run_id=failed.run_id,
        window=failed.window,
        error=failed.error,
        runs=_summaries(exc.runs),
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


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"database unavailable ({type(exc).__name__})"}, status_code=503)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


class BodySizeLimit:
    """413 for bodies over ``max_bytes``, by Content-Length and by the bytes actually received
    (chunked bodies have no Content-Length), before any endpoint sees them."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and not (declared.isascii() and declared.isdigit()):
            await self._refuse(scope, receive, send, 400, "invalid Content-Length")
            return
        if declared is not None and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, 413, self._too_large)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send, 413, self._too_large)
                return
            if not message.get("more_body", False):
                break
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
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


# ----- processing --------------------------------------------------------------------------
class SourceGuard:
    """One processing request per source: a lock within this process, and no run of the source
    in flight anywhere on the instance (daemon, CLI, other API processes) once the runs whose
    worker is gone were failed."""

    def __init__(self, instance: dg.DagsterInstance, processing: ProcessingSettings) -> None:
        self.instance = instance
        self.processing = processing
        self._locks = {source: threading.Lock() for source in SOURCE_NAMES}

    def in_flight_run(self, source: str) -> str | None:
        records = self.instance.get_run_records(
            dg.RunsFilter(tags={SOURCE_TAG: source}, statuses=IN_FLIGHT), limit=1
        )
        return records[0].dagster_run.run_id if records else None

    @contextmanager
    def hold(self, sources: tuple[str, ...]) -> Iterator[list[StaleRun]]:
        """Yields the runs it failed because their worker was gone."""
        held: list[threading.Lock] = []
        try:
            for source in sources:
                lock = self._locks[source]
                if not lock.acquire(blocking=False):
                    raise SourceBusy(source, None)
                held.append(lock)
            stale_after = self.processing.resolved().stale_run_seconds
            failed: list[StaleRun] = []
            for source in sources:
                for run in fail_stale_runs(self.instance, source, stale_after):
                    logger.warning(run.line())
                    failed.append(run)
                run_id = self.in_flight_run(source)
                if run_id is not None:
                    raise SourceBusy(source, run_id)
            yield failed
        finally:
            for lock in held:
                lock.release()


class Processor:
    """What the two processing endpoints do, outside HTTP."""

    def __init__(
        self, defs: dg.Definitions, instance: dg.DagsterInstance, jobmanager: sa.Engine
    ) -> None:
        self.defs = defs
        self.instance = instance
        self.jobmanager = jobmanager

    def run_source(self, source: str, earlier: list[RunOutcome] | None = None) -> SourceOutcome:
        """Everything past the marker; a failure reports ``earlier`` runs of the request too."""
        outcome = process_source(self.defs, self.instance, source, trigger=TRIGGER)
        self._raise_on_failure(source, [*(earlier or []), *outcome.runs])
        return outcome

    def backfill_then_run(self, source: str) -> SourceOutcome:
        """R21: every row again, window by window, then anything new; stops at a failed run."""
        job = self.defs.resolve_job_def(source_named(source).job_name)
        processing: ProcessingSettings = self.defs.resources["processing"]
        settings = processing.resolved()
        outcome = SourceOutcome(source)
        lowest, highest = engine_marker_bounds(self.jobmanager, source)
        windows = (
            backfill_windows(
                chunk_reader(self.jobmanager, source, settings.chunk_size),
                source,
                min(0, lowest - 1),
                highest,
                settings.partition_width,
            )
            if highest is not None and lowest is not None
            else []
        )
        for planned in windows:
            outcome.runs.append(execute_window(job, self.instance, planned, TRIGGER))
            self._raise_on_failure(source, outcome.runs)
        outcome.runs += self.run_source(source, earlier=outcome.runs).runs
        return outcome

    def marker(self, source: str) -> int:
        with self.jobmanager.connect() as conn:
            return read_marker(conn, source)

    @staticmethod
    def _raise_on_failure(source: str, runs: list[RunOutcome]) -> None:
        failed = next((run for run in runs if not run.success), None)
        if failed is not None:
            raise RunFailed(source, failed, runs)


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
    400: {"model": ErrorBody, "description": "body not UTF-8, or an unreadable Content-Length"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    409: {"model": BusyBody, "description": "a run for the source is in flight"},
    413: {"model": ErrorBody, "description": "body over 64 KiB"},
    502: {"model": RunFailedBody, "description": "a Dagster run failed"},
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
) -> FastAPI:
    """The API over one code location's definitions and one Dagster instance.

    ``token`` None (or empty) closes the write endpoints (503) instead of opening them;
    ``read_token`` None closes the reads likewise, unless ``public_reads`` opens them to anyone.
    """
    jobmanager = _engine(jobmanager_url)
    logs = _engine(logs_url)
    guard = SourceGuard(instance, (defs.resources or {}).get("processing", ProcessingSettings()))
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
        description="Print-OS events and finishing scans → job status. Processing requests run"
        " as Dagster runs tagged `jobstatus/trigger=api`.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_exception_handler(SourceBusy, _busy)
    app.add_exception_handler(RunFailed, _run_failed)
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

    write = [Depends(require_token)]
    read = [Depends(require_read_token)]
    app.include_router(api_integration.build_router(jobmanager, logs, read, write))

    @app.post(
        "/api/process-print-os",
        dependencies=write,
        responses=ERRORS_WRITE,
        summary="Process print-OS events past the marker (force: backfill from the start)",
    )
    def process_print_os(
        response: Response,
        request: Annotated[ProcessPrintOsRequest, Body()] = ProcessPrintOsRequest(),  # noqa: B008
    ) -> ProcessPrintOsResponse:
        with guard.hold((PRINT_OS,)) as stale:
            _name_stale_runs(response, stale)
            if request.force:
                outcome = processor.backfill_then_run(PRINT_OS)
            else:
                outcome = processor.run_source(PRINT_OS)
            marker = processor.marker(PRINT_OS)
        return ProcessPrintOsResponse(
            processed_count=outcome.total("rows_read"),
            jobs_updated=outcome.total("jobs_updated"),
            last_marker=marker,
            runs=_summaries(outcome.runs),
        )

    @app.post(
        "/api/process-status-updates",
        dependencies=write,
        responses=ERRORS_WRITE,
        summary="Process print-OS events and/or scans past their markers",
    )
    def process_status_updates(
        response: Response,
        request: Annotated[ProcessStatusUpdatesRequest, Body()] = ProcessStatusUpdatesRequest(),  # noqa: B008
    ) -> ProcessStatusUpdatesResponse:
        sources = SOURCE_NAMES if request.source == "both" else (request.source,)
        outcomes: dict[str, SourceOutcome] = {}
        runs: list[RunOutcome] = []
        with guard.hold(sources) as stale:
            _name_stale_runs(response, stale)
            for source in sources:
                outcomes[source] = processor.run_source(source, earlier=runs)
                runs += outcomes[source].runs
        return ProcessStatusUpdatesResponse(
            print_os_processed=outcomes[PRINT_OS].total("rows_read") if PRINT_OS in outcomes else 0,
            scanner_processed=outcomes[SCANNER].total("rows_read") if SCANNER in outcomes else 0,
            jobs_updated=sum(outcome.total("jobs_updated") for outcome in outcomes.values()),
            runs=_summaries(runs),
        )

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


def _name_stale_runs(response: Response, stale: list[StaleRun]) -> None:
    if stale:
        response.headers[STALE_RUNS_HEADER] = ", ".join(run.run_id for run in stale)


def _select_one(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as error:  # noqa: BLE001 - any failure means "unreachable" here
        return type(error).__name__
    return "ok"
