"""The HTTP API against the real databases, a real Dagster instance and a real daemon (docs/rules.md
§6, Surfaces).

One shop per module: the small backlog is processed through the API (runs queued, dequeued and
executed by `dagster-daemon`), then every refusal is checked to leave the databases and the run
history exactly as they were.
"""

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jobstatus_dagster.api import MAX_BODY_BYTES, create_app
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.io.sources import chunk_reader
from jobstatus_dagster.pipeline import queue
from jobstatus_dagster.pipeline.windows import PlannedRun, backfill_windows
from jobstatus_dagster_tests.backlog import JOBS, fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.databases import fresh_urls

with warnings.catch_warnings():
    # starlette 1.x prefers httpx2 for its test client; httpx is what this venv has.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# A backfill waits for the backfill daemon, which looks every 30 s (twice: launch, then done).
BACKFILL_WAIT = 240
READ = {"Authorization": "Bearer r"}


@pytest.fixture(scope="module")
def app(shop: Shop, instance: dg.DagsterInstance, urls: DatabaseUrls, daemon: None) -> FastAPI:
    fill_small_backlog(shop)
    return create_app(
        shop.definitions(), instance, urls.jobmanager, urls.logs, token=TOKEN, read_token=TOKEN
    )


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@dataclass(frozen=True)
class FirstProcessing:
    """The API's answer to the module's first write, and the database right after it (later
    tests add and process rows, in whatever order they run)."""

    body: dict
    marker: int
    print_rows: int
    jobs_written: int


@pytest.fixture(scope="module")
def first_processing(client: TestClient, shop: Shop) -> FirstProcessing:
    assert shop.marker("print_os") == 0, "the backlog is processed by the module's first write"
    response = client.post("/api/process-print-os", json={"force": False}, headers=AUTH)
    assert response.status_code == 200, response.text
    return FirstProcessing(
        response.json(),
        shop.marker("print_os"),
        shop.scalar(shop.jm, 'SELECT count(*) FROM "print OS"'),
        shop.scalar(shop.jm, "SELECT count(*) FROM jobs WHERE operations <> '{}'"),
    )


@pytest.fixture(scope="module")
def processed(first_processing: FirstProcessing) -> dict:
    """The backlog's print-OS rows processed through the API (the first write of the module)."""
    return first_processing.body


def api_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return instance.get_runs(dg.RunsFilter(tags={"jobstatus/trigger": "api"}))


def new_print_event(shop: Shop) -> None:
    """A print event past every marker: something to process, were a refused request let in."""
    marker = shop.scalar(shop.jm, 'SELECT max(marker) + 1 FROM "print OS"')
    shop.print_event("B-I1", "PRINTED", marker=marker)


def unchanged(shop: Shop, instance: dg.DagsterInstance):
    """Snapshot of every table we write and of the run history, to compare after a refusal."""
    return shop.snapshot(), instance.get_runs_count()


# ----- processing --------------------------------------------------------------------------
def test_process_print_os_reports_what_the_database_holds(
    first_processing: FirstProcessing, instance: dg.DagsterInstance
) -> None:
    processed = first_processing.body
    assert processed["last_marker"] == first_processing.marker == 114  # the backlog's last
    assert processed["processed_count"] == first_processing.print_rows
    assert processed["jobs_updated"] == first_processing.jobs_written > 0
    assert [run["window"] for run in processed["runs"]] == ["print_os:0-114"]
    assert processed["runs"][0]["status"] == "SUCCESS" and processed["runs"][0]["success"]
    # The request is a Dagster run in the instance, tagged as the API's, that went through the
    # run queue (enqueued, then launched by the daemon) and its pool.
    runs = {run.run_id: run for run in api_runs(instance)}
    run = runs[processed["runs"][0]["run_id"]]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert run.tags["jobstatus/source"] == "print_os"
    assert run.job_name == "process_print_os"
    assert run.run_op_concurrency.all_pools == {"print_os"}
    events = {
        record.event_log_entry.dagster_event_type
        for record in instance.get_records_for_run(run.run_id).records
    }
    assert {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING} <= events


def test_a_run_can_be_followed_by_its_id(processed: dict, client: TestClient) -> None:
    run_id = processed["runs"][0]["run_id"]
    response = client.get(f"/api/runs/{run_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "SUCCESS" and body["finished"] and body["error"] is None
    assert (body["source"], body["window"], body["trigger"]) == (
        "print_os",
        "print_os:0-114",
        "api",
    )
    assert body["counts"]["rows_read"] == processed["processed_count"]
    assert body["counts"]["jobs_updated"] == processed["jobs_updated"]
    assert body["counts"]["marker_after"] == 114
    unknown = client.get("/api/runs/00000000-0000-0000-0000-000000000000", headers=AUTH)
    assert unknown.status_code == 404
    assert client.get("/api/runs/1'; DROP TABLE runs;--", headers=AUTH).status_code == 422


def test_process_status_updates_per_source_then_nothing_new(
    processed: dict, client: TestClient, shop: Shop, instance: dg.DagsterInstance
) -> None:
    """Other tests of the module may have processed either source already: the expected windows
    come from the markers before the requests and the rows this test adds on both sources."""
    new_print_event(shop)  # pending on the other source: a scanner request must leave it alone
    job = shop.add_job()
    shop.add_job_operation(job, "1", "op003")
    scan_id = shop.scan(f"{job}_1", ["coating"])
    scan_from, print_from = shop.marker("scanned_codes"), shop.marker("print_os")
    scans_pending = shop.scalar(
        shop.jm, "SELECT count(*) FROM scanned_codes WHERE scan_id > :m", m=scan_from
    )

    scanner = client.post("/api/process-status-updates", json={"source": "scanner"}, headers=AUTH)
    assert scanner.status_code == 200, scanner.text
    body = scanner.json()
    assert body["print_os_processed"] == 0 and shop.marker("print_os") == print_from
    assert body["scanner_processed"] == scans_pending >= 1
    assert body["jobs_updated"] >= 1
    assert shop.job_operations_json(job) == {"coating": True}
    assert [run["window"] for run in body["runs"]] == [f"scanner:{scan_from}-{scan_id}"]
    assert shop.marker("scanned_codes") == scan_id
    runs = {run.run_id: run for run in api_runs(instance)}
    assert all(runs[r["run_id"]].status == dg.DagsterRunStatus.SUCCESS for r in body["runs"])

    print_to = shop.scalar(shop.jm, 'SELECT max(marker) FROM "print OS"')
    prints = client.post("/api/process-status-updates", json={"source": "print_os"}, headers=AUTH)
    assert prints.status_code == 200, prints.text
    assert prints.json()["scanner_processed"] == 0
    assert prints.json()["print_os_processed"] >= 1
    assert [run["window"] for run in prints.json()["runs"]] == [f"print_os:{print_from}-{print_to}"]
    assert shop.marker("print_os") == print_to and shop.marker("scanned_codes") == scan_id

    before = unchanged(shop, instance)
    again = client.post("/api/process-status-updates", headers=AUTH)  # no body: "both"
    assert again.status_code == 200, again.text
    assert again.json() == {
        "print_os_processed": 0,
        "scanner_processed": 0,
        "jobs_updated": 0,
        "runs": [],
    }
    assert unchanged(shop, instance) == before


def test_r21_force_backfills_idempotently_and_never_lowers_the_marker(
    processed: dict, client: TestClient, shop: Shop, instance: dg.DagsterInstance
) -> None:
    """force is a partition backfill over the marker ranges, run by the daemon like the asset
    page's; the answer comes once the backfill is done."""
    # Rows other tests left unprocessed would be processed by the backfill: catch up first.
    catch_up = client.post("/api/process-print-os", json={"force": False}, headers=AUTH)
    assert catch_up.status_code == 200, catch_up.text
    marker = shop.marker("print_os")  # 114 after the backlog; more if other tests ran first
    force = {"force": True, "wait": BACKFILL_WAIT}
    first = client.post("/api/process-print-os", json=force, headers=AUTH)
    assert first.status_code == 200, first.text
    assert [run["window"] for run in first.json()["runs"]] == ["print_os:0-10000"]
    assert first.json()["last_marker"] == shop.marker("print_os") == marker
    backfill = instance.get_backfill(first.json()["backfill_id"])
    assert backfill.status.value == "COMPLETED_SUCCESS"
    assert backfill.tags["jobstatus/trigger"] == "api"

    before = shop.snapshot()
    second = client.post("/api/process-print-os", json=force, headers=AUTH)
    assert second.status_code == 200, second.text
    assert second.json()["jobs_updated"] == 0
    assert second.json()["last_marker"] == shop.marker("print_os") == marker
    assert shop.snapshot() == before  # audit, failures (and their attempts), jobs, logs rows
    runs = [instance.get_run_by_id(run["run_id"]) for run in second.json()["runs"]]
    assert [run.job_name for run in runs] == ["__ASSET_JOB"]  # the asset page's kind of run
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    assert second.json()["processed_count"] >= first.json()["processed_count"] > 0


@pytest.mark.parametrize(
    "chunk_size,partition_width,windows",
    [
        (5000, 10_000, [(0, 114)]),
        (3, 10_000, [(0, 104), (104, 110), (110, 114)]),
        # A window never crosses a marker-range partition: (0, 104] then (104, 208] ...
        (4, 104, [(0, 104), (104, 112), (112, 114)]),
    ],
)
def test_backfill_windows_hold_a_chunk_within_one_partition(
    processed: dict, shop: Shop, chunk_size: int, partition_width: int, windows: list
) -> None:
    planned = list(
        backfill_windows(
            chunk_reader(shop.jm, "print_os", chunk_size), "print_os", 0, 114, partition_width
        )
    )
    assert [(w.from_marker, w.to_marker) for w in planned] == windows
    assert {(w.source_type, w.partition_width) for w in planned} == {("print_os", partition_width)}


def test_a_backlog_is_queued_as_one_run_per_window(
    processed: dict, client: TestClient, shop: Shop, instance: dg.DagsterInstance, urls
) -> None:
    """The windows the sensor would launch one after the other go into the queue together; the
    source's pool runs them one at a time, in order, and the answer has them all."""
    catch_up = client.post("/api/process-print-os", json={}, headers=AUTH)
    assert catch_up.status_code == 200, catch_up.text
    marker = shop.marker("print_os")
    for _ in range(9):
        new_print_event(shop)
    markers = [
        row["marker"]
        for row in shop.rows(
            shop.jm, 'SELECT marker FROM "print OS" WHERE marker > :m ORDER BY marker', m=marker
        )
    ]
    assert len(markers) == 9 and markers[-1] < 10_000  # all in the first marker range
    ends = markers[3::4] + [markers[-1]]
    expected = [f"print_os:{lo}-{hi}" for lo, hi in zip([marker, *ends], ends, strict=False)]
    chunked = Shop(urls, chunk_size=4)
    app = create_app(
        chunked.definitions(), instance, urls.jobmanager, urls.logs, token=TOKEN, read_token=TOKEN
    )
    with chunked, TestClient(app) as chunked_client:
        response = chunked_client.post("/api/process-print-os", json={}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert [run["window"] for run in response.json()["runs"]] == expected
    assert response.json()["processed_count"] >= 9
    assert shop.marker("print_os") == markers[-1]
    runs = [instance.get_run_by_id(run["run_id"]) for run in response.json()["runs"]]
    spans = [run_span(instance, run.run_id) for run in runs]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans


def run_span(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """When the run started and ended, from its event log."""
    records = instance.get_records_for_run(run_id).records
    times = {
        record.event_log_entry.dagster_event.event_type: record.event_log_entry.timestamp
        for record in records
        if record.event_log_entry.dagster_event is not None
    }
    return times[dg.DagsterEventType.RUN_START], times[dg.DagsterEventType.RUN_SUCCESS]


def test_a_failed_run_is_a_502_naming_it_and_nothing_is_written(
    processed: dict, client: TestClient, shop: Shop, instance: dg.DagsterInstance
) -> None:
    """The mapping table is gone while the run executes: the run fails inside Dagster (in the
    daemon's run worker), not in the API."""
    new_print_event(shop)
    before = unchanged(shop, instance)[0]
    shop.execute(shop.logs, "ALTER TABLE imposition_file_mapping RENAME TO mapping_away")
    try:
        response = client.post("/api/process-print-os", json={}, headers=AUTH)
    finally:
        shop.execute(shop.logs, "ALTER TABLE mapping_away RENAME TO imposition_file_mapping")
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["source"] == "print_os" and "imposition_file_mapping" in body["error"]
    assert body["window"].startswith(f"print_os:{shop.marker('print_os')}-")
    assert body["runs"] == [
        {"run_id": body["run_id"], "window": body["window"], "status": "FAILURE", "success": False}
    ]
    run = instance.get_run_by_id(body["run_id"])
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags["jobstatus/trigger"] == "api"
    assert shop.snapshot() == before
    followed = client.get(f"/api/runs/{body['run_id']}", headers=AUTH).json()
    assert followed["status"] == "FAILURE" and followed["error"] == body["error"]
    again = client.post("/api/process-print-os", json={}, headers=AUTH)  # resumes there (R18)
    assert again.status_code == 200, again.text
    assert again.json()["runs"][0]["window"] == body["window"]


def test_an_unexpected_error_is_a_json_500_without_traceback(
    processed: dict, instance: dg.DagsterInstance, urls: DatabaseUrls
) -> None:
    """Definitions without the jobs: a bug of the deployment, not of the request."""
    app = create_app(dg.Definitions(), instance, urls.jobmanager, urls.logs, token=TOKEN)
    with TestClient(app, raise_server_exceptions=False) as bare_client:
        for _ in range(2):
            response = bare_client.post("/api/process-print-os", json={"force": True}, headers=AUTH)
            assert response.status_code == 500
            assert response.json()["detail"].startswith("internal error (")
            assert "Traceback" not in response.text


# ----- reading -----------------------------------------------------------------------------
def test_job_status_current_versions_and_history(
    processed: dict, client: TestClient, shop: Shop
) -> None:
    client.post("/api/process-status-updates", json={"source": "both"}, headers=AUTH)
    response = client.get(f"/api/job-status/{JOBS[0]}", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["job_id"] == JOBS[0]
    assert body["current_status"] == shop.job_operations_json(JOBS[0])
    assert body["current_status"]["print"] is True
    assert [v["version_tag"] for v in body["versions"]] == ["1", "2"]
    assert all(v["status"] == "completed" for v in body["versions"])
    audit = shop.rows(
        shop.jm,
        "SELECT update_id, operation, status, source_type FROM job_status_updates"
        " WHERE job_id = :j ORDER BY update_id DESC",
        j=JOBS[0],
    )
    assert [
        (h["update_id"], h["operation_type"], h["status"], h["source_type"])
        for h in body["update_history"]
    ] == [(a["update_id"], a["operation"], a["status"], a["source_type"]) for a in audit]
    assert body["next_before"] is None
    assert {"updated_at", "processed_at", "notes", "run_id"} <= set(body["update_history"][0])


def test_job_status_pages_newest_first(processed: dict, client: TestClient, shop: Shop) -> None:
    everything = client.get(
        f"/api/job-status/{JOBS[0]}", params={"limit": 500}, headers=AUTH
    ).json()
    ids = [h["update_id"] for h in everything["update_history"]]
    assert len(ids) >= 3 and ids == sorted(ids, reverse=True)
    pages, before = [], None
    while True:
        params = {"limit": 2} | ({"before": before} if before is not None else {})
        page = client.get(f"/api/job-status/{JOBS[0]}", params=params, headers=AUTH).json()
        pages.append([h["update_id"] for h in page["update_history"]])
        before = page["next_before"]
        if before is None:
            break
        assert before == pages[-1][-1]
    assert [i for page in pages for i in page] == ids
    assert all(0 < len(page) <= 2 for page in pages[:-1])


def test_unknown_job_is_404_json(client: TestClient) -> None:
    response = client.get("/api/job-status/0_0", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown job 0_0"}


def test_health(client: TestClient, instance: dg.DagsterInstance, urls: DatabaseUrls) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"jobmanager": "ok", "logs": "ok", "dagster": "ok"},
    }
    gone = urls.jobmanager.replace("/jobmanager_", "/no_such_database_")
    down = create_app(dg.Definitions(), instance, gone, urls.logs, token=TOKEN, read_token=TOKEN)
    with TestClient(down) as down_client:
        response = down_client.get("/api/health")
        read = down_client.get(f"/api/job-status/{JOBS[0]}", headers=AUTH)
    assert read.status_code == 503
    assert read.json() == {"detail": "database unavailable (OperationalError)"}
    assert response.status_code == 503
    assert response.json()["checks"] == {
        "jobmanager": "OperationalError",
        "logs": "ok",
        "dagster": "ok",
    }


# ----- refusals: never a write, never a run ------------------------------------------------
WRITES = [
    ("/api/process-print-os", {"force": False}),
    ("/api/process-status-updates", {"source": "both"}),
]


@pytest.mark.parametrize("path,body", WRITES)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer t\xf6k".encode("latin-1")},
    ],
    ids=["none", "wrong", "basic", "bare", "longer", "latin1"],
)
def test_writes_refuse_a_missing_or_wrong_token(
    processed: dict, client: TestClient, shop: Shop, instance, path, body, headers
) -> None:
    new_print_event(shop)  # something to process, were the request let through
    before = unchanged(shop, instance)
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing or wrong bearer token"}
    assert unchanged(shop, instance) == before


@pytest.mark.parametrize("path,body", WRITES)
def test_writes_are_closed_without_a_configured_token(
    processed: dict, shop: Shop, instance, urls: DatabaseUrls, path, body
) -> None:
    before = unchanged(shop, instance)
    for token in (None, ""):
        closed = create_app(
            shop.definitions(), instance, urls.jobmanager, urls.logs, token=token, read_token="r"
        )
        with TestClient(closed) as closed_client:
            for headers in ({}, AUTH, {"Authorization": "Bearer "}):
                response = closed_client.post(path, json=body, headers=headers)
                assert response.status_code == 503
                assert "API token not configured" in response.json()["detail"]
            assert closed_client.get(f"/api/job-status/{JOBS[0]}", headers=READ).status_code == 200
    assert unchanged(shop, instance) == before


BAD_BODIES = [
    ("/api/process-print-os", {"json": {"force": "true"}}, 422),
    ("/api/process-print-os", {"json": {"force": 1}}, 422),
    ("/api/process-print-os", {"json": {"force": None}}, 422),
    ("/api/process-print-os", {"json": {"force": False, "source": "both"}}, 422),
    ("/api/process-print-os", {"json": [True]}, 422),
    ("/api/process-print-os", {"json": "force"}, 422),
    ("/api/process-print-os", {"json": {"wait": -1}}, 422),
    ("/api/process-print-os", {"json": {"wait": 601}}, 422),
    ("/api/process-status-updates", {"json": {"wait": "5"}}, 422),
    ("/api/process-status-updates", {"json": {"source": "printer"}}, 422),
    ("/api/process-status-updates", {"json": {"source": "BOTH"}}, 422),
    ("/api/process-status-updates", {"json": {"source": 1}}, 422),
    ("/api/process-status-updates", {"json": {"source": ["both"]}}, 422),
    ("/api/process-status-updates", {"json": {"source": "both'; DROP TABLE jobs;--"}}, 422),
    ("/api/process-print-os", {"content": b"force=true"}, 422),
    ("/api/process-print-os", {"content": b"force=true", "ctype": "text/plain"}, 422),
    ("/api/process-print-os", {"content": b'{"force": tru', "ctype": "application/json"}, 422),
    # Not UTF-8: 400 before any validation (RFC 8259), also when Python's json would have read
    # it as UTF-16 or UTF-32, with or without a byte-order mark, or without a Content-Type.
    ("/api/process-print-os", {"content": b'{"force": \xff}', "ctype": "application/json"}, 400),
    *(
        ("/api/process-status-updates", {"content": encoded, "ctype": ctype}, 400)
        for encoded in (
            '{"source": "both"}'.encode("utf-16"),
            '{"source": "both"}'.encode("utf-16-le"),
            '{"source": "both"}'.encode("utf-32"),
        )
        for ctype in ("application/json", "application/json; charset=utf-16")
    ),
    ("/api/process-status-updates", {"content": '{"source": "both"}'.encode("utf-16-be")}, 400),
    ("/api/process-print-os", {"content": b"\xff\xfe", "ctype": "text/plain"}, 422),
    ("/api/process-status-updates", {"json": {"source": "both", "pad": "x" * MAX_BODY_BYTES}}, 413),
    ("/api/process-print-os", {"chunked": b" " * (MAX_BODY_BYTES + 1)}, 413),
]


@pytest.mark.parametrize(
    "body,ctype",
    [
        ('\ufeff{"source": "both", "wait": 120}'.encode(), "application/json"),  # a UTF-8 BOM
        (b'{"source": "both", "wait": 120}', "application/json; charset=utf-8"),
        (b'{"source": "both", "wait": 120}', "application/json;charset=UTF-8"),
    ],
)
def test_utf8_json_bodies_pass_the_encoding_check(
    processed: dict, client: TestClient, body: bytes, ctype: str
) -> None:
    """The refusal of bodies that are not UTF-8 leaves every UTF-8 spelling alone. (Waited
    for: no run of these is left in flight for the module's next tests.)"""
    response = client.post(
        "/api/process-status-updates", headers={**AUTH, "Content-Type": ctype}, content=body
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path,request_kwargs,status", BAD_BODIES)
def test_bad_bodies_are_refused_without_a_write(
    processed: dict, client: TestClient, shop: Shop, instance, path, request_kwargs, status
) -> None:
    new_print_event(shop)
    before = unchanged(shop, instance)
    kwargs = dict(request_kwargs)
    headers = dict(AUTH)
    if "ctype" in kwargs:
        headers["Content-Type"] = kwargs.pop("ctype")
    if "chunked" in kwargs:  # no Content-Length: the middleware counts the bytes received
        payload = kwargs.pop("chunked")
        kwargs["content"] = iter([payload[: len(payload) // 2], payload[len(payload) // 2 :]])
        headers["Content-Type"] = "application/json"
    response = client.post(path, headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str | list)
    assert unchanged(shop, instance) == before


@pytest.mark.parametrize(
    "url",
    [
        "/api/job-status/1'; DROP TABLE jobs;--",
        "/api/job-status/1%27%3B%20DROP%20TABLE%20jobs%3B--",
        "/api/job-status/7001_1' OR '1'='1",
        "/api/job-status/%2e%2e",
        "/api/job-status/7001_1%00",
        "/api/job-status/7001-1",
        "/api/job-status/7001_1_2",
        "/api/job-status/\uff17001_1",
        "/api/job-status/" + "1" * 30 + "_1",
        "/api/job-status/" + "9" * 5000,
        "/api/job-status/7001_1?limit=0",
        "/api/job-status/7001_1?limit=501",
        "/api/job-status/7001_1?limit=ten",
        "/api/job-status/7001_1?before=-1",
        "/api/job-status/7001_1?before=" + str(2**70),
    ],
)
def test_bad_job_ids_and_paging_are_422(
    processed: dict, client: TestClient, shop: Shop, instance, url: str
) -> None:
    before = unchanged(shop, instance)
    response = client.get(url, headers=AUTH)
    assert response.status_code == 422, response.text
    assert unchanged(shop, instance) == before


@pytest.mark.parametrize(
    "url",
    [
        "/api/job-status/../../etc/passwd",
        "/api/job-status/..%2F..%2Fetc%2Fpasswd",
        "/api/job-status/7001_1/../../../etc/passwd",
        "/etc/passwd",
        "/api/",
    ],
)
def test_path_tricks_reach_nothing(client: TestClient, shop: Shop, instance, url: str) -> None:
    before = unchanged(shop, instance)
    response = client.get(url)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    assert unchanged(shop, instance) == before


# ----- the run queue: one run per source, and no daemon --------------------------------------
def test_a_request_queues_behind_a_run_of_its_source_and_the_other_source_goes_on(
    processed: dict, client: TestClient, shop: Shop, instance: dg.DagsterInstance
) -> None:
    """A run of the source is in flight (from the CLI, the asset page, anywhere): the request's
    run waits in the queue behind it (202 once `wait` is over), the other source is not held up,
    and the queued run goes once the source is free."""
    job_def = shop.definitions().resolve_job_def("process_print_os")
    blocker = instance.create_run_for_job(
        job_def,
        run_config=PlannedRun("print_os", 0, 0, "test").run_config(),
        status=dg.DagsterRunStatus.STARTED,
        tags={"jobstatus/source": "print_os"},
    )
    new_print_event(shop)
    try:
        held = client.post("/api/process-print-os", json={"wait": 3}, headers=AUTH)
        assert held.status_code == 202, held.text
        assert held.json()["daemon_running"] is True
        runs = held.json()["runs"]
        assert runs[0]["run_id"] == blocker.run_id  # the run in flight is waited for, first
        (run,) = runs[1:]
        assert run["status"] == "QUEUED"
        scanner = client.post(
            "/api/process-status-updates", json={"source": "scanner"}, headers=AUTH
        )
        assert scanner.status_code == 200, scanner.text
        assert client.get(f"/api/runs/{run['run_id']}", headers=AUTH).json()["status"] == "QUEUED"
    finally:
        instance.report_run_canceled(blocker)
    (done,) = queue.wait_for_runs(instance, [run["run_id"]], 120)
    assert done.status == dg.DagsterRunStatus.SUCCESS
    followed = client.get(f"/api/runs/{run['run_id']}", headers=AUTH).json()
    assert followed["finished"] and followed["counts"]["marker_after"] == shop.marker("print_os")


def test_with_the_daemon_down_a_request_answers_202_within_its_wait(
    processed: dict, shop: Shop, urls: DatabaseUrls, pg_admin_uri: str, tmp_path: Path
) -> None:
    """An instance no daemon serves: the runs are queued and wait there; the answer comes when
    the request's wait is over and says why nothing ran."""
    alone = fresh_urls(pg_admin_uri).dagster
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=instance_overrides(alone)) as down:
        app = create_app(
            shop.definitions(), down, urls.jobmanager, urls.logs, token=TOKEN, read_token=TOKEN
        )
        new_print_event(shop)
        with TestClient(app) as down_client:
            started = time.monotonic()
            response = down_client.post("/api/process-print-os", json={"wait": 2}, headers=AUTH)
            elapsed = time.monotonic() - started
            assert response.status_code == 202, response.text
            assert 2 <= elapsed < 10
            body = response.json()
            assert body["daemon_running"] is False and "no Dagster daemon" in body["detail"]
            (run,) = body["runs"]
            followed = down_client.get(f"/api/runs/{run['run_id']}", headers=AUTH)
            assert followed.status_code == 200
            assert followed.json()["status"] == "QUEUED" and not followed.json()["finished"]
            assert down.get_run_by_id(run["run_id"]).tags["jobstatus/trigger"] == "api"

            forced = down_client.post(
                "/api/process-print-os", json={"force": True, "wait": 0}, headers=AUTH
            )
        assert forced.status_code == 202, forced.text
        assert forced.json()["runs"] == [] and forced.json()["daemon_running"] is False
        (backfill,) = down.get_backfills()
        assert backfill.backfill_id == forced.json()["backfill_id"]
        assert backfill.status.value == "REQUESTED"


def test_force_is_a_backfill_with_one_partition_per_marker_range(
    processed: dict, shop: Shop, urls: DatabaseUrls, pg_admin_uri: str, tmp_path: Path
) -> None:
    """Ranges 50 markers wide: each range holding rows (100-114 and whatever later tests added)
    is a partition of the backfill (the UI shows a status per range); empty ranges are not."""
    alone = fresh_urls(pg_admin_uri).dagster
    narrow = Shop(urls, partition_width=50)
    with (
        narrow,
        dg.instance_for_test(temp_dir=str(tmp_path), overrides=instance_overrides(alone)) as down,
    ):
        app = create_app(narrow.definitions(), down, urls.jobmanager, urls.logs, token=TOKEN)
        with TestClient(app) as down_client:
            forced = down_client.post(
                "/api/process-print-os", json={"force": True, "wait": 0}, headers=AUTH
            )
        assert forced.status_code == 202, forced.text
        markers = [row["marker"] for row in shop.rows(shop.jm, 'SELECT marker FROM "print OS"')]
        # The ranges holding rows, none of the empty ones (R21).
        expected = sorted(
            {f"{(m - 1) // 50 * 50:012d}-{(m - 1) // 50 * 50 + 50:012d}" for m in markers}
        )
        (backfill,) = down.get_backfills()
        data = backfill.asset_backfill_data
        assert data.target_subset.asset_keys == {dg.AssetKey("print_os_processing")}
        partitions = data.target_subset.get_partitions_subset(dg.AssetKey("print_os_processing"))
        assert sorted(partitions.get_partition_keys()) == expected


# ----- the OpenAPI document, fuzzed --------------------------------------------------------
def test_openapi_document_declares_the_bearer_scheme(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Writes need `Authorization: Bearer <JOBSTATUS_API_TOKEN>`; reads that"
        " token or `JOBSTATUS_API_READ_TOKEN`.",
    }
    for path in ("/api/process-print-os", "/api/process-status-updates", "/api/webhooks"):
        assert document["paths"][path]["post"]["security"] == [{"bearerAuth": []}]
    for path in ("/api/job-status/{job_id}", "/api/status-updates", "/api/jobs"):
        assert document["paths"][path]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in document["paths"]["/api/health"]["get"]


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
def test_fuzzed_requests_never_get_a_server_error(
    app: FastAPI, processed: dict, mode: GenerationMode
) -> None:
    """Schemathesis over the app's own OpenAPI document, with the token: every answer is
    documented, JSON, and never 5xx. (`schemathesis.pytest.from_fixture` trips on pytest 9, so
    the operations' strategies are driven with hypothesis directly.)"""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Every request carries the token (who may call what: test_integration_api's matrix).
    schema.config.generation.update(with_security_parameters=False)
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode.is_negative and operation.label in ("GET /api/health", "GET /api/webhooks"):
            continue  # no parameters and no body: nothing to get wrong

        # Valid bodies are few ({}, force, three sources) and each force is a backfill: fewer.
        examples = 10 if mode.is_positive and operation.method.upper() == "POST" else 25

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def fuzz(case: schemathesis.Case) -> None:
            if mode.is_positive and isinstance(case.body, dict):
                case.body["wait"] = 0  # a force is a backfill: answered 202 rather than waited
            # A processing request waits for its runs: more than schemathesis' default 10 s read
            # timeout on a loaded machine (seen in the fault suite). The operations a filter may
            # name are the shop's (operation_codes): an unknown one is a 422 the schema cannot
            # express.
            response = case.call_and_validate(
                headers=AUTH, timeout=300, excluded_checks=[positive_data_acceptance]
            )
            assert response.status_code < 500, (response.status_code, response.text[:500])

        fuzz()
