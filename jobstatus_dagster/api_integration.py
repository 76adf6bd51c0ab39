"""The integration endpoints: the change feed, the job list (JSON or CSV), webhook subscriptions.

What a shop's MIS, dashboards and customer service expect: poll what changed since a marker,
list and filter jobs, export them as CSV, or be told by a signed POST. Mounted on the same app
(and OpenAPI document) as the processing endpoints by ``create_app``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from fastapi.params import Depends
from fastapi.responses import StreamingResponse
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from jobstatus_dagster.core.webhooks import new_secret, redact_url
from jobstatus_dagster.io import outbox
from jobstatus_dagster.io.feed import (
    FEED_COLUMNS,
    JobFilter,
    export_feed,
    export_jobs,
    known_operations,
    read_as_of,
    read_feed,
    read_jobs,
)
from jobstatus_dagster.io.webhook_http import refused_target

MAX_UPDATE_ID = 2**63 - 1
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
CSV = "text/csv"
JobStatus = Literal["completed", "partial", "aborted", "pending"]
NEXT_AFTER_HEADER = "Jobstatus-Next-After"
AS_OF_HEADER = "Jobstatus-As-Of"
# A cursor is a job id as the jobs table holds it: printable, no control characters (which
# Postgres text cannot hold either).
JOB_CURSOR_PATTERN = r"^[^\x00-\x1f\x7f]{1,100}$"
OPERATION_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
UNPRINTABLE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")

JOB_CSV_COLUMNS = (
    "job_id",
    "in_jobs_table",
    "updated_at",
    "print_status",
    "operations",
    "versions",
    "current_status",
)


# ----- bodies ------------------------------------------------------------------------------
def _as_utc(value: datetime) -> datetime:
    """Stored times are naive UTC (like the shop's); answers say so with an offset."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


def _iso_time(value: object) -> object:
    """Only ISO 8601 text is a time here (pydantic would take 10.0 as seconds since 1970)."""
    if not isinstance(value, str) or not value[:4].isdigit() or value[4:5] != "-":
        raise ValueError("expected an ISO 8601 time, e.g. 2026-11-29T08:00:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]


class SourceFreshness(BaseModel):
    marker: int = Field(description="the source's events are processed up to this marker")
    processed_at: UtcDatetime | None = Field(description="when that marker was reached (UTC)")


AsOf = dict[str, SourceFreshness]
AS_OF_DESCRIPTION = (
    "How fresh this answer is: per source (print_os, scanner), the marker processed up to"
    " and when. Events past these markers are not reflected yet."
)


class StatusUpdate(BaseModel):
    """One change of a job version's operation state (R25): fold them, keeping the last per
    (job_id, version_tag, operation), and you hold the current state."""

    update_id: int = Field(
        description="position in the feed: ascending, never reused, one more than the last"
    )
    event: str = Field(description="status: the key now holds this state; withdrawn: none")
    job_id: str
    version_tag: str
    operation: str
    status: str | None = Field(description="completed, partial or aborted; null when withdrawn")
    applied: bool = Field(description="true for a status, false for a withdrawal")
    printed_count: int | None = Field(description="PrintOS's counts, where PrintOS decided it")
    aborted_count: int | None
    total_count: int | None
    notes: str | None
    event_time: UtcDatetime | None = Field(
        description="when the deciding event happened at the press or scanner"
    )
    processed_at: UtcDatetime = Field(description="when jobstatus recorded the change")
    source_type: str | None = Field(description="print_os or scanner; null when withdrawn")
    source_id: int | None = Field(description='the deciding "print OS".id or scan_id')
    source_marker: int | None = Field(description="that source row's marker")
    previous_update_id: int | None = Field(
        description="this key's change before this one; null for its first"
    )
    current: bool = Field(description="no later change of this key exists (yet)")
    withdrawn_at: UtcDatetime | None = Field(description="set on a withdrawal: when")
    run_id: str | None = Field(description="the Dagster run that recorded it")


class StatusUpdatesPage(BaseModel):
    updates: list[StatusUpdate] = Field(description="ascending by update_id")
    next_after: int = Field(
        description="pass as `after` to continue; equals `after` when nothing is new yet"
    )
    as_of: AsOf = Field(description=AS_OF_DESCRIPTION)


class JobOperationState(BaseModel):
    operation: str
    status: str | None
    value: bool
    version_tag: str | None
    completed_by: str | None
    source_id: int | None
    event_time: UtcDatetime | None
    notes: str | None
    updated_at: UtcDatetime | None


class JobVersionPrint(BaseModel):
    version_tag: str
    status: str | None
    printed: int
    aborted: int
    total: int
    highest: bool = Field(description="the job's highest version: the one `print` reports")
    notes: str | None
    event_time: UtcDatetime | None
    updated_at: UtcDatetime | None


class JobSummary(BaseModel):
    job_id: str
    in_jobs_table: bool
    updated_at: UtcDatetime | None = Field(description="when this job's state last changed")
    current_status: dict[str, Any] = Field(description="jobs.operations as the shop reads it")
    operations: list[JobOperationState] = Field(description="current state per operation")
    versions: list[JobVersionPrint] = Field(description="print state per job version")


class JobsPage(BaseModel):
    jobs: list[JobSummary] = Field(description="ascending by job_id")
    next_after: str | None = Field(
        description="pass as `after` for the next page; null on the last page"
    )
    as_of: AsOf = Field(description=AS_OF_DESCRIPTION)


def _webhook_url(value: str) -> str:
    """The URL as it will be POSTed to: http(s), a host, no whitespace or control characters
    (which a lenient parser would strip or read into something else); stored normalised."""
    if UNPRINTABLE.search(value):
        raise ValueError("the URL must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("the URL must be http:// or https:// with a host")
    normalised = str(AnyHttpUrl(value))  # raises for anything but a well-formed http(s) URL
    httpx.URL(normalised)  # what delivery will parse; InvalidURL is a ValueError
    return normalised


def _operations(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("an empty list would receive nothing: omit operations for all")
    return list(dict.fromkeys(value))


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: Annotated[str, AfterValidator(_webhook_url)] = Field(
        max_length=2048,
        description="http or https URL that receives the POSTs (stored normalised);"
        " no whitespace or control characters; not a loopback, private or link-local address",
    )
    operations: Annotated[
        list[Annotated[str, Field(pattern=OPERATION_PATTERN)]] | None,
        AfterValidator(_operations),
    ] = Field(
        None,
        max_length=50,
        description='only changes of these operations (e.g. ["coating"]); all when absent'
        " (an empty list is refused); duplicates are dropped",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_chosen_secret(cls, data: Any) -> Any:
        # A client-chosen secret was often short or reused: secrets are the server's now.
        if isinstance(data, dict) and "secret" in data:
            raise ValueError(
                "secret is not accepted: the server generates it (whsec_...) and returns it"
                " once, in this request's answer; omit secret"
            )
        return data


class Webhook(BaseModel):
    id: int
    url: Annotated[str, AfterValidator(redact_url)] = Field(
        description="as stored, with any user:pass@ shown as ***@"
    )
    operations: list[str] | None
    created_at: UtcDatetime


class CreatedWebhook(Webhook):
    secret: str = Field(
        description="whsec_ + base64 of 32 random bytes: verifies the webhook-signature header"
        " (Standard Webhooks). Shown this once: keep it"
    )


class RotatedSecret(BaseModel):
    id: int
    secret: str = Field(description="the new secret (whsec_...): shown this once")
    secret_rotated_at: UtcDatetime
    previous_secret_expires_at: UtcDatetime = Field(
        description="until then the replaced secret signs too (both signatures are sent)"
    )


class WebhookState(Webhook):
    pending: int = Field(description="deliveries still to be made or retried")
    delivered: int
    failed: int = Field(description="deliveries given up after the attempt limit")
    last_failure: str | None = Field(description="why the latest given-up delivery failed")
    disabled_at: UtcDatetime | None = Field(
        description="when the receiver ended the subscription (410 Gone): nothing is sent since"
    )
    disabled_reason: str | None
    last_attempt_at: UtcDatetime | None = Field(description="when the latest attempt ended")
    last_attempt_status: int | None = Field(
        description="the receiver's status code then; null when no answer came"
    )
    last_attempt_error: str | None = Field(
        description="why the latest attempt failed (null when it succeeded): a receiver that"
        " keeps failing shows here long before a delivery is given up"
    )
    secret_rotated_at: UtcDatetime | None
    previous_secret_expires_at: UtcDatetime | None = Field(
        description="while set, the replaced secret still signs beside the current one"
    )


class ErrorBody(BaseModel):
    detail: str


def job_cursor_header(job_id: str) -> str:
    """A job id as a header value: percent-encoded (RFC 3986), so any id the shop holds (any
    Unicode, even a line break) fits a header and ends no header early; an id of letters,
    digits, ``_ . - ~`` is unchanged. Decode it before passing it back as ``after``."""
    return quote(job_id, safe="")


# What the API's answers carry in headers, for the OpenAPI document (test_openapi_headers
# compares it with what is actually sent).
CSV_HEADERS: dict[str, dict[str, Any]] = {
    AS_OF_HEADER: {
        "description": "CSV answers: the `as_of` object of the JSON answers, as JSON ("
        + AS_OF_DESCRIPTION
        + ")",
        "schema": {"type": "string"},
    },
}
NEXT_AFTER_FEED: dict[str, Any] = {
    "description": "CSV answers with `limit`: the last update_id of the page (`after` when it"
    " is empty); pass it as `after` for the next page",
    "schema": {"type": "string"},
}
NEXT_AFTER_JOBS: dict[str, Any] = {
    "description": "CSV answers with `limit`: the last job id of a full page, percent-encoded"
    " (decode it, then pass it as `after`); empty on the last page",
    "schema": {"type": "string"},
}
WWW_AUTHENTICATE: dict[str, dict[str, Any]] = {
    "WWW-Authenticate": {
        "description": "`Bearer`: the scheme the token is expected in",
        "schema": {"type": "string"},
    }
}


def _csv_response(description: str, next_after: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {CSV: {"schema": {"type": "string"}}},
            "headers": {**CSV_HEADERS, NEXT_AFTER_HEADER: next_after},
        }
    }


# ----- CSV ---------------------------------------------------------------------------------
# OWASP's CSV injection advice: a text cell a spreadsheet would read as a formula (or, after a
# tab or carriage return, as the start of one) gets a leading single quote, and text cells are
# quoted. Numbers stay numbers (a negative marker is a number, not a formula).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(text: str) -> str:
    """``'=1+1`` for ``=1+1``: shown as text by a spreadsheet, never evaluated."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"  # as the JSON answers say it
    if isinstance(value, datetime):
        return _as_utc(value).isoformat()
    if isinstance(value, dict | list):
        return neutralise(json.dumps(value, separators=(",", ":"), sort_keys=True))
    if isinstance(value, str):
        return neutralise(value)
    return "" if value is None else value


def csv_lines(columns: Sequence[str], pages: Iterable[list[dict]], row) -> Iterator[str]:
    """A header, then one CSV chunk per page: memory bounded by a page. Every text cell is
    quoted and a formula-like one neutralised (``neutralise``), in every export."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC)
    writer.writerow(columns)
    for page in pages:
        writer.writerows([_cell(value) for value in row(item)] for item in page)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _feed_row(update: dict) -> list:
    return [update[column] for column in FEED_COLUMNS]


def _job_row(job: dict) -> list:
    print_state = next((o for o in job["operations"] if o["operation"] == "print"), None)
    return [
        job["job_id"],
        job["in_jobs_table"],
        job["updated_at"],
        print_state["status"] if print_state else None,
        ";".join(f"{o['operation']}={o['status'] or ''}" for o in job["operations"]),
        ";".join(
            f"{v['version_tag']}={v['status'] or ''} {v['printed']}/{v['total']}"
            for v in job["versions"]
        ),
        job["current_status"],
    ]


def wants_csv(request: Request) -> bool:
    """CSV when the client names text/csv (q above 0) and does not prefer application/json to
    it by a higher q-value; JSON otherwise (wildcards mean JSON, the default)."""
    quality: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(quality.get(media.lower(), 0.0), q)
    csv_q = quality.get(CSV, 0.0)
    return csv_q > 0 and csv_q >= quality.get("application/json", 0.0)


def _naive_utc(value: datetime | None) -> datetime | None:
    """Timestamps are stored as naive UTC; an aware time is converted, a naive one is UTC."""
    if value is None or value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # 9999-12-31T23:59-23:59 and the like: past the calendar in UTC
        raise HTTPException(422, "updated_since is out of range once converted to UTC") from None


def _as_of_header(jobmanager: sa.Engine) -> dict[str, str]:
    """A CSV body has no room for ``as_of``: the header carries it, as JSON."""
    with jobmanager.connect() as conn:
        as_of = read_as_of(conn)
    shown = {k: SourceFreshness.model_validate(v).model_dump(mode="json") for k, v in as_of.items()}
    return {AS_OF_HEADER: json.dumps(shown, separators=(",", ":"))}


# ----- the router --------------------------------------------------------------------------
def build_router(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    read: Sequence[Depends],
    write: Sequence[Depends],
    *,
    webhook_allow_private: bool = False,
    webhook_secret_overlap_seconds: float = 86_400.0,
) -> APIRouter:
    """The endpoints over the app's engines; ``read``/``write`` are its auth dependencies."""
    router = APIRouter()
    read_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
        422: {"description": "a parameter is malformed"},
        503: {"model": ErrorBody, "description": "reads are closed, or a database is down"},
    }
    write_errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "body not UTF-8, or an unreadable Content-Length"},
        401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
        413: {"model": ErrorBody, "description": "body over 64 KiB"},
        503: {"model": ErrorBody, "description": "no API token configured, or a database is down"},
    }

    def check_operations(names: Iterable[str]) -> None:
        with logs.connect() as conn:
            known = known_operations(conn)
        unknown = sorted(set(names) - known)
        if unknown:
            raise HTTPException(
                422,
                f"unknown operation {', '.join(unknown)}; known: {', '.join(sorted(known))}",
            )

    @router.get(
        "/api/status-updates",
        dependencies=list(read),
        response_model=StatusUpdatesPage,
        responses={
            **read_errors,
            **_csv_response("the page, or with Accept: text/csv a CSV", NEXT_AFTER_FEED),
        },
        summary="The change feed: status changes after `after`, oldest first",
        description="Loop: start with `after=0`, then pass `next_after` back until `updates` is"
        " empty; a change is never returned twice nor skipped, even while processing commits."
        " Every change of a (job, version, operation)'s state is a new entry, in the order the"
        " state went through them (a late event, a re-processing that changes counts, a"
        " withdrawal): keep the last entry per (job_id, version_tag, operation) and you hold"
        " the current state (R25). An unchanged re-run adds nothing."
        " With `Accept: text/csv` the same rows come as CSV (header row first); without"
        " `limit` a CSV export runs to the end of the feed, streamed. The next page's"
        " `after` is then the last row's update_id (also in the `Jobstatus-Next-After`"
        " header when `limit` is given).",
    )
    def status_updates(
        request: Request,
        after: Annotated[
            int, Query(ge=0, le=MAX_UPDATE_ID, description="the last update_id already seen")
        ] = 0,
        limit: Annotated[
            int | None,
            Query(ge=1, le=MAX_LIMIT, description=f"page size; {DEFAULT_LIMIT} when absent"),
        ] = None,
    ) -> Any:
        if wants_csv(request):
            if limit is None:
                pages: Iterable[list[dict]] = export_feed(jobmanager, after)
                headers = {}
            else:
                with jobmanager.connect() as conn:
                    page = read_feed(conn, after, limit)
                pages = [page]
                headers = {NEXT_AFTER_HEADER: str(page[-1]["update_id"] if page else after)}
            return StreamingResponse(
                csv_lines(FEED_COLUMNS, pages, _feed_row),
                media_type=CSV,
                headers={**headers, **_as_of_header(jobmanager)},
            )
        with jobmanager.connect() as conn:
            as_of = read_as_of(conn)
            updates = read_feed(conn, after, limit or DEFAULT_LIMIT)
        return StatusUpdatesPage(
            updates=[StatusUpdate.model_validate(u) for u in updates],
            next_after=updates[-1]["update_id"] if updates else after,
            as_of={k: SourceFreshness.model_validate(v) for k, v in as_of.items()},
        )

    @router.get(
        "/api/jobs",
        dependencies=list(read),
        response_model=JobsPage,
        responses={
            **read_errors,
            **_csv_response("the page, or with Accept: text/csv a CSV", NEXT_AFTER_JOBS),
        },
        summary="Jobs with their current operations and print state, filtered, by job id",
        description="Filters combine: `operation=coating&status=completed` lists the jobs whose"
        " coating is completed; `status` alone is about print (completed, partial, aborted;"
        " `pending`: a job of the jobs table with no status yet for that operation, whether or"
        " not the job needs it). `updated_since` keeps jobs whose state changed at or"
        " after that time (UTC when no offset is given). Pages follow job ids: pass"
        " `next_after` as `after`. With `Accept: text/csv` the same jobs come as CSV; without"
        " `limit` a CSV export runs to the end, streamed.",
    )
    def jobs(
        request: Request,
        status: Annotated[
            JobStatus | None, Query(description="completed, partial, aborted, pending")
        ] = None,
        operation: Annotated[
            str | None,
            Query(pattern=OPERATION_PATTERN, description="an operation name, e.g. coating"),
        ] = None,
        updated_since: Annotated[
            IsoTime | None, Query(description="ISO 8601 time, e.g. 2026-11-29T08:00:00Z")
        ] = None,
        after: Annotated[
            str | None,
            Query(pattern=JOB_CURSOR_PATTERN, description="the last job id already seen"),
        ] = None,
        limit: Annotated[
            int | None,
            Query(ge=1, le=MAX_LIMIT, description=f"page size; {DEFAULT_LIMIT} when absent"),
        ] = None,
    ) -> Any:
        if operation is not None:
            check_operations([operation])
        if status in ("partial", "aborted") and operation not in (None, "print"):
            raise HTTPException(422, f"status {status} applies to print only")
        job_filter = JobFilter(status, operation, _naive_utc(updated_since))
        start = after or ""
        if wants_csv(request):
            if limit is None:
                pages: Iterable[list[dict]] = export_jobs(jobmanager, job_filter, start)
                headers = {}
            else:
                with jobmanager.connect() as conn:
                    page = read_jobs(conn, job_filter, start, limit)
                pages = [page]
                last = page[-1]["job_id"] if len(page) == limit else ""
                headers = {NEXT_AFTER_HEADER: job_cursor_header(last)}
            return StreamingResponse(
                csv_lines(JOB_CSV_COLUMNS, pages, _job_row),
                media_type=CSV,
                headers={**headers, **_as_of_header(jobmanager)},
            )
        size = limit or DEFAULT_LIMIT
        with jobmanager.connect() as conn:
            as_of = read_as_of(conn)
            found = read_jobs(conn, job_filter, start, size)
        return JobsPage(
            jobs=[JobSummary.model_validate(job) for job in found],
            next_after=found[-1]["job_id"] if len(found) == size else None,
            as_of={k: SourceFreshness.model_validate(v) for k, v in as_of.items()},
        )

    @router.post(
        "/api/webhooks",
        dependencies=list(write),
        status_code=201,
        responses=write_errors,
        summary="Subscribe a URL to status changes (Standard Webhooks: signed JSON POSTs)",
        description="Every status change that lands (an applied change, or a withdrawal) is"
        " POSTed as JSON to `url`, signed as Standard Webhooks (standardwebhooks.com) say:"
        " `webhook-id` (the delivery's id, the same on every retry: de-duplicate on it),"
        " `webhook-timestamp` (the attempt's, unix seconds) and `webhook-signature`"
        " (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`). The secret is made by the server"
        " and returned in this answer only (a `secret` in the request is refused). Also sent,"
        " for older receivers: `X-Jobstatus-Signature: sha256=<hex HMAC-SHA256 of the raw body"
        " keyed by the secret's text>`, `X-Jobstatus-Delivery` and `X-Jobstatus-Update-Id`."
        " Any 2xx answer acknowledges; anything else is retried with backoff until the attempt"
        " limit (429/503 with `Retry-After` wait at least that long); 410 Gone ends the"
        " subscription. A job's changes arrive in order. Loopback, private, link-local and"
        " other non-public addresses are refused as targets (422) unless the server allows"
        " them (JOBSTATUS_WEBHOOK_ALLOW_PRIVATE).",
    )
    def create_webhook(
        webhook: Annotated[WebhookRequest, Body()],
    ) -> CreatedWebhook:
        if webhook.operations:
            check_operations(webhook.operations)
        if not webhook_allow_private:
            target = urlsplit(webhook.url)
            port = target.port or (443 if target.scheme == "https" else 80)
            refused = refused_target(target.hostname or "", port)
            if refused is not None:
                raise HTTPException(
                    422,
                    f"refused webhook target: {refused}; only public addresses are called"
                    " (JOBSTATUS_WEBHOOK_ALLOW_PRIVATE=true allows others)",
                )
        secret = new_secret()
        with jobmanager.begin() as conn:
            created = outbox.create_subscription(conn, webhook.url, secret, webhook.operations)
        return CreatedWebhook.model_validate({**created, "secret": secret})

    @router.post(
        "/api/webhooks/{webhook_id}/rotate-secret",
        dependencies=list(write),
        responses={**write_errors, 404: {"model": ErrorBody, "description": "unknown webhook"}},
        summary="A new secret for a subscription; the old one still signs for a while",
        description="Returns the new secret (whsec_..., shown this once). Until"
        " `previous_secret_expires_at` (JOBSTATUS_WEBHOOK_SECRET_OVERLAP_SECONDS, 24 h by"
        " default) every delivery carries two signatures in `webhook-signature`, one per"
        " secret, so the receiver can switch at any moment in between. A second rotation"
        " within the overlap ends the oldest secret at once: at most two secrets sign.",
    )
    def rotate_webhook_secret(
        webhook_id: Annotated[int, Path(ge=1, le=MAX_UPDATE_ID)],
    ) -> RotatedSecret:
        secret = new_secret()
        with jobmanager.begin() as conn:
            rotated = outbox.rotate_secret(conn, webhook_id, secret, webhook_secret_overlap_seconds)
        if rotated is None:
            raise HTTPException(404, f"unknown webhook {webhook_id}")
        return RotatedSecret.model_validate({**rotated, "secret": secret})

    @router.get(
        "/api/webhooks",
        dependencies=list(write),
        responses=write_errors,
        summary="The subscriptions and how their deliveries stand (secrets are never shown)",
        description="Counts are current: every attempt is recorded as it ends. A subscription"
        " the receiver ended (410 Gone) shows `disabled_at` and `disabled_reason`; a URL's"
        " credentials (user:pass@) are shown as `***@`.",
    )
    def list_webhooks() -> list[WebhookState]:
        with jobmanager.connect() as conn:
            return [WebhookState.model_validate(s) for s in outbox.list_subscriptions(conn)]

    @router.delete(
        "/api/webhooks/{webhook_id}",
        dependencies=list(write),
        status_code=204,
        responses={**write_errors, 404: {"model": ErrorBody, "description": "unknown webhook"}},
        summary="Unsubscribe: no more deliveries; pending ones are given up",
    )
    def delete_webhook(
        webhook_id: Annotated[int, Path(ge=1, le=MAX_UPDATE_ID)],
    ) -> Response:
        with jobmanager.begin() as conn:
            if not outbox.delete_subscription(conn, webhook_id):
                raise HTTPException(404, f"unknown webhook {webhook_id}")
        return Response(status_code=204)

    return router
