"""The OpenAPI document describes every header the API sends (issue 19): each endpoint of the
document is called the ways a client calls it (JSON, CSV, paged, without a token, with a wrong
one), and every header of every answer, beyond HTTP's own, must be documented for that
endpoint and status; every header the document promises must be sent by some answer."""

from collections import defaultdict
from collections.abc import Iterator
from urllib.parse import unquote

import dagster as dg
import httpx
import pytest
from fastapi import FastAPI

from jobstatus_dagster.api import create_app
from jobstatus_dagster_tests.backlog import JOBS, fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_dagster_tests.test_hostile_data import get_routes, paths_for, query_variants
from jobstatus_testkit.serving import serve

TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = {**AUTH, "Accept": "text/csv"}
# HTTP's own, which OpenAPI leaves to HTTP ("Content-Type" is described by `content`).
PROTOCOL = {"content-type", "content-length", "date", "server", "transfer-encoding", "connection"}
ODD_JOB = "７001_1"  # a job id of the shop's that is no Latin-1 text: still a valid header


@pytest.fixture(scope="module")
def app(shop: Shop, instance: dg.DagsterInstance) -> FastAPI:
    fill_small_backlog(shop)
    shop.add_job(ODD_JOB)
    shop.process(instance, "print_os")
    shop.process(instance, "scanner")
    return create_app(
        shop.definitions(), instance, shop.urls.jobmanager, shop.urls.logs, TOKEN, TOKEN
    )


@pytest.fixture(scope="module")
def api(app: FastAPI) -> Iterator[httpx.Client]:
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def documented(app: FastAPI) -> dict[tuple[str, str, str], set[str]]:
    """(path, method, status) → the header names its response describes, lower case."""
    found = {}
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            for status, response in operation.get("responses", {}).items():
                headers = {name.lower() for name in response.get("headers", {})}
                found[(path, method, status)] = headers
    return found


def test_every_header_sent_is_in_the_openapi_document_and_every_documented_one_is_sent(
    app: FastAPI, api: httpx.Client, instance: dg.DagsterInstance
) -> None:
    described = documented(app)
    sent: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    run_ids = [run.run_id for run in instance.get_runs(limit=2)]
    values = {"job_id": [JOBS[0]], "run_id": run_ids}

    def call(path: str, method: str, concrete: str, **kwargs) -> httpx.Response:
        answer = api.request(method.upper(), concrete, **kwargs)
        custom = {name.lower() for name in answer.headers} - PROTOCOL
        sent[(path, method, str(answer.status_code))] |= custom
        return answer

    for path, parameters in get_routes(app):
        for concrete in paths_for(path, parameters, values):
            call(path, "get", concrete)  # no token
            call(path, "get", concrete, headers={"Authorization": "Bearer wrong"})
            for params in query_variants(parameters):
                for headers in (AUTH, CSV):
                    answer = call(path, "get", concrete, params=params, headers=headers)
                    # Follow the CSV pages the way the header says: every job is a page's last.
                    pages = 0
                    while (after := answer.headers.get("jobstatus-next-after")) and pages < 50:
                        pages += 1
                        params = {**params, "after": unquote(after)}
                        answer = call(path, "get", concrete, params=params, headers=headers)
                        assert answer.status_code == 200, answer.text
    writes = [
        (path, method)
        for path, methods in app.openapi()["paths"].items()
        for method in methods
        if method != "get"
    ]
    for path, method in writes:
        concrete = path.replace("{webhook_id}", "1")
        call(path, method, concrete)  # without a token: a refusal, nothing runs
        # Answered by the middleware before any endpoint: too large, not UTF-8 JSON.
        call(path, method, concrete, headers=AUTH, content=b"{}" + b" " * 70_000)
        call(
            path, method, concrete, headers=AUTH, json=None, content='{"wait": 0}'.encode("utf-16")
        )
    # Writes that succeed: processing (not waited for), a subscription made, rotated, deleted.
    for path, method in writes:
        if path.startswith("/api/process"):
            answer = call(path, method, path, headers=AUTH, json={"wait": 0})
            assert answer.status_code in (200, 202), answer.text
    made = call(
        "/api/webhooks",
        "post",
        "/api/webhooks",
        headers=AUTH,
        json={"url": "https://93.184.215.14/hook"},
    )
    assert made.status_code == 201, made.text
    hook = f"/api/webhooks/{made.json()['id']}"
    rotated = call(
        "/api/webhooks/{webhook_id}/rotate-secret", "post", f"{hook}/rotate-secret", headers=AUTH
    )
    assert rotated.status_code == 200, rotated.text
    deleted = call("/api/webhooks/{webhook_id}", "delete", hook, headers=AUTH)
    assert deleted.status_code == 204, deleted.text
    for status in ("413", "400", "201", "204"):
        assert any(key[2] == status and key[1] != "get" for key in sent), status

    undocumented = {
        key: headers - described.get(key, set())
        for key, headers in sent.items()
        if headers - described.get(key, set())
    }
    assert not undocumented, undocumented
    never_sent = {
        key: headers - sent.get(key, set())
        for key, headers in described.items()
        if headers - sent.get(key, set())
    }
    assert not never_sent, never_sent
    assert ("/api/jobs", "get", "200") in sent
    assert {"jobstatus-next-after", "jobstatus-as-of"} <= sent[("/api/jobs", "get", "200")]


def test_a_job_cursor_header_holds_any_job_id(api: httpx.Client) -> None:
    """The last job of a CSV page is the next page's cursor, in a header: percent-encoded."""
    everything = api.get("/api/jobs", headers=AUTH, params={"limit": 1000}).json()["jobs"]
    ids = [job["job_id"] for job in everything]
    before = ids[ids.index(ODD_JOB) - 1]
    answer = api.get("/api/jobs", params={"limit": 1, "after": before}, headers=CSV)
    assert answer.status_code == 200
    assert answer.headers["jobstatus-next-after"] == "%EF%BC%97001_1"
    assert unquote(answer.headers["jobstatus-next-after"]) == ODD_JOB
