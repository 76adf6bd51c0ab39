"""The integration API against the real server (uvicorn on 127.0.0.1) and Postgres: who may
read, the change feed (order, paging, no skip under concurrent commits), job lists, CSV."""

import base64
import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from jobstatus_dagster.api import create_app
from jobstatus_dagster.io import outbox
from jobstatus_dagster.io.writer import WRITER_LOCK
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.serving import serve

WRITE_TOKEN = "write-t0ken"
READ_TOKEN = "read-t0ken"
WRITE = {"Authorization": f"Bearer {WRITE_TOKEN}"}
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRONG = {"Authorization": "Bearer nope"}
CSV = {"Accept": "text/csv"}


@pytest.fixture(scope="module")
def processed_shop(shop: Shop, instance: dg.DagsterInstance) -> Shop:
    fill_small_backlog(shop)
    shop.process(instance, "print_os")
    shop.process(instance, "scanner")
    return shop


def make_app(shop: Shop, instance: dg.DagsterInstance, **auth: object):
    return create_app(shop.definitions(), instance, shop.urls.jobmanager, shop.urls.logs, **auth)


@pytest.fixture(scope="module")
def base_url(processed_shop: Shop, instance: dg.DagsterInstance) -> Iterator[str]:
    app = make_app(
        processed_shop,
        instance,
        token=WRITE_TOKEN,
        read_token=READ_TOKEN,
        webhook_allow_private=True,
    )
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def api(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


def change_ids(shop: Shop) -> list[int]:
    return [r["change_id"] for r in shop.rows(shop.jm, "SELECT change_id FROM job_status_changes")]


def fold(changes: list[dict]) -> dict[tuple, dict]:
    """What a feed reader holds (R25): the last change per (job, version, operation), keys
    whose last change is a withdrawal holding nothing."""
    held: dict[tuple, dict] = {}
    for change in changes:
        key = (change["job_id"], change["version_tag"], change["operation"])
        held[key] = change
    return {k: c for k, c in held.items() if c["event"] == "status"}


def version_state(shop: Shop) -> dict[tuple, dict]:
    return {
        (r["job_id"], r["version_tag"], r["operation"]): r
        for r in shop.rows(shop.jm, "SELECT * FROM job_version_state")
    }


def follow_feed(api: httpx.Client, after: int = 0, limit: int = 3) -> tuple[list[dict], int]:
    """Every update past ``after``, a page at a time, the way a client loops."""
    seen: list[dict] = []
    while True:
        page = api.get("/api/status-updates", params={"after": after, "limit": limit}, headers=READ)
        assert page.status_code == 200, page.text
        body = page.json()
        if not body["updates"]:
            assert body["next_after"] == after
            return seen, after
        seen += body["updates"]
        after = body["next_after"]
        assert after == body["updates"][-1]["update_id"]


# ----- auth --------------------------------------------------------------------------------
READS = [
    ("GET", "/api/job-status/7001_1"),
    ("GET", "/api/status-updates"),
    ("GET", "/api/jobs"),
]
WRITES = [
    ("POST", "/api/webhooks", {"url": "http://127.0.0.1:9/hook"}),
    ("POST", "/api/webhooks/987654/rotate-secret", None),
    ("GET", "/api/webhooks", None),
    ("DELETE", "/api/webhooks/987654", None),
    ("POST", "/api/process-print-os", {"force": False}),
    ("POST", "/api/process-status-updates", {"source": "both"}),
]


@pytest.mark.parametrize(("method", "path"), READS)
def test_reads_need_the_read_or_the_write_token(api: httpx.Client, method: str, path: str) -> None:
    for headers in ({}, WRONG, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}):
        refused = api.request(method, path, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
    for headers in (READ, WRITE):
        assert api.request(method, path, headers=headers).status_code == 200, headers
        assert api.request(method, path, headers={**headers, **CSV}).status_code in (200, 406)


def test_following_a_run_is_a_read(api: httpx.Client) -> None:
    """GET /api/runs/{id} tells whether processing happened: a read like the others."""
    path = "/api/runs/00000000-0000-0000-0000-000000000000"
    for headers in ({}, WRONG):
        refused = api.get(path, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
    for headers in (READ, WRITE):
        assert api.get(path, headers=headers).status_code == 404, headers  # past auth: unknown


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_writes_need_the_write_token_and_the_read_token_is_not_enough(
    api: httpx.Client, processed_shop: Shop, method: str, path: str, body: dict | None
) -> None:
    before = processed_shop.snapshot()
    subscriptions = processed_shop.scalar(
        processed_shop.jm, "SELECT count(*) FROM webhook_subscriptions"
    )
    for headers in ({}, WRONG, READ):
        refused = api.request(method, path, json=body, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
    assert processed_shop.snapshot() == before
    assert (
        processed_shop.scalar(processed_shop.jm, "SELECT count(*) FROM webhook_subscriptions")
        == subscriptions
    )
    if path.startswith("/api/webhooks"):
        answer = api.request(method, path, json=body, headers=WRITE)
        expected = 404 if "987654" in path else {"POST": 201, "GET": 200}[method]
        assert answer.status_code == expected, answer.text


def test_reads_are_closed_without_a_read_token_unless_declared_public(
    processed_shop: Shop, instance: dg.DagsterInstance
) -> None:
    closed = make_app(processed_shop, instance, token=WRITE_TOKEN)
    with serve(closed) as url, httpx.Client(base_url=url) as client:
        for _, path in READS:
            for headers in ({}, READ, WRITE, WRONG):
                answer = client.get(path, headers=headers)
                assert answer.status_code == 503, (path, headers)
                assert "JOBSTATUS_API_READ_TOKEN" in answer.json()["detail"]
        assert client.get("/api/health").status_code == 200
    public = make_app(processed_shop, instance, token=WRITE_TOKEN, public_reads=True)
    with serve(public) as url, httpx.Client(base_url=url) as client:
        for _, path in READS:
            assert client.get(path).status_code == 200, path
            assert client.get(path, headers=WRITE).status_code == 200, path
            assert client.get(path, headers=WRONG).status_code == 401, path
        assert client.post("/api/webhooks", json={}).status_code == 401


# ----- the change feed ---------------------------------------------------------------------
def test_feed_pages_to_the_end_in_order_each_change_once(
    api: httpx.Client, processed_shop: Shop
) -> None:
    seen, last = follow_feed(api, limit=3)
    ids = [u["update_id"] for u in seen]
    assert ids == sorted(change_ids(processed_shop))
    assert ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 3  # R25: by one
    assert last == ids[-1]
    first = seen[0]
    row = processed_shop.rows(
        processed_shop.jm, "SELECT * FROM job_status_changes WHERE change_id = :c", c=ids[0]
    )[0]
    for key in ("job_id", "version_tag", "operation", "status", "notes", "source_type", "event"):
        assert first[key] == row[key]
    body = api.get("/api/status-updates", params={"after": last}, headers=READ).json()
    assert body == {"updates": [], "next_after": last, "as_of": body["as_of"]}
    assert body["as_of"]["print_os"]["marker"] == processed_shop.marker("print_os")
    assert body["as_of"]["scanner"]["marker"] == processed_shop.marker("scanned_codes")


def test_r25_folding_the_feed_gives_the_state(api: httpx.Client, processed_shop: Shop) -> None:
    """R25: the last change per key is the state, and it says it is the current one."""
    seen, _ = follow_feed(api, limit=7)
    held = fold(seen)
    state = version_state(processed_shop)
    assert held.keys() == state.keys() and held
    for key, change in held.items():
        assert change["current"] and change["update_id"] == state[key]["change_id"]
        for column in ("status", "printed_count", "aborted_count", "total_count", "source_id"):
            assert change[column] == state[key][column], (key, column)
    # every job_operations row jobstatus wrote says what the fold says
    written = processed_shop.rows(
        processed_shop.logs,
        "SELECT j.job_id, j.version_tag, c.operation, j.status FROM job_operations j"
        " JOIN operation_codes c ON c.operation_id = j.operation_id"
        " WHERE j.source_id IS NOT NULL",
    )
    assert written
    for row in written:
        key = (row["job_id"].strip(), row["version_tag"].strip(), row["operation"].lower())
        assert held[key]["status"] == row["status"], key


def test_feed_never_skips_a_change_committed_after_a_higher_one_was_read(
    api: httpx.Client, processed_shop: Shop, instance: dg.DagsterInstance
) -> None:
    """R25/R19 on our own stream: while another transaction holds the writers' lock, a run
    cannot draw a change id; once it commits, the reader gets the run's changes, numbered on
    from the last one it saw."""
    _, start = follow_feed(api)
    job = processed_shop.add_job()
    processed_shop.add_job_operation(job, "1")
    processed_shop.map_files("IMP-FEED-LOCK", [f"FILE_1_Labex_{job}_1"])
    processed_shop.print_event("IMP-FEED-LOCK", "PRINTED")
    holder = processed_shop.jm.connect()
    holder_tx = holder.begin()
    holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITER_LOCK})
    outcome: list[object] = []
    writer = threading.Thread(
        target=lambda: outcome.append(processed_shop.process(instance, "print_os"))
    )
    writer.start()
    try:
        time.sleep(2.0)
        seen_while_held, after = follow_feed(api, start)
        assert seen_while_held == [] and after == start
    finally:
        holder_tx.rollback()
        holder.close()
        writer.join(120)
    assert outcome
    seen, _ = follow_feed(api, start)
    assert [u["job_id"] for u in seen] == [job]
    assert seen[0]["update_id"] == start + 1 and seen[0]["status"] == "completed"


# ----- job lists ---------------------------------------------------------------------------
def jobs_of(api: httpx.Client, **params: object) -> list[dict]:
    """Every page of /api/jobs with these filters, followed to the end."""
    found: list[dict] = []
    after = None
    while True:
        query = {**params, "limit": 1, **({"after": after} if after else {})}
        page = api.get("/api/jobs", params=query, headers=READ)
        assert page.status_code == 200, page.text
        body = page.json()
        found += body["jobs"]
        after = body["next_after"]
        if after is None:
            return found


def state_jobs(shop: Shop, operation: str, status: str) -> list[str]:
    return [
        r["job_id"]
        for r in shop.rows(
            shop.jm,
            "SELECT job_id FROM job_operation_state WHERE operation = :o AND status = :s"
            " ORDER BY job_id",
            o=operation,
            s=status,
        )
    ]


def test_jobs_list_pages_to_the_end_with_state_and_as_of(
    api: httpx.Client, processed_shop: Shop
) -> None:
    everything = jobs_of(api)
    ids = [job["job_id"] for job in everything]
    known = processed_shop.rows(
        processed_shop.jm,
        "SELECT job_id FROM jobs UNION SELECT job_id FROM job_operation_state ORDER BY 1",
    )
    assert ids == [r["job_id"] for r in known]
    job = next(j for j in everything if j["job_id"] == "7001_1")
    assert job["current_status"] == processed_shop.job_operations_json("7001_1")
    assert {o["operation"] for o in job["operations"]} >= {"print"}
    assert [v["version_tag"] for v in job["versions"]] == ["1", "2"]
    page = api.get("/api/jobs", params={"limit": 2}, headers=READ).json()
    assert page["next_after"] == page["jobs"][-1]["job_id"]
    assert set(page["as_of"]) == {"print_os", "scanner"}
    status = api.get("/api/job-status/7001_1", headers=READ).json()
    assert status["as_of"] == page["as_of"]


def test_jobs_filters_combine(api: httpx.Client, processed_shop: Shop) -> None:
    coating = jobs_of(api, operation="coating", status="completed")
    assert [j["job_id"] for j in coating] == state_jobs(processed_shop, "coating", "completed")
    assert coating, "the backlog completes coating somewhere"
    for job in coating:
        assert any(
            o["operation"] == "coating" and o["status"] == "completed" for o in job["operations"]
        )
    for status in ("completed", "partial", "aborted"):
        listed = [j["job_id"] for j in jobs_of(api, status=status)]
        assert listed == state_jobs(processed_shop, "print", status), status
    pending = {j["job_id"] for j in jobs_of(api, operation="coating", status="pending")}
    in_jobs = {
        r["job_id"] for r in processed_shop.rows(processed_shop.jm, "SELECT job_id FROM jobs")
    }
    assert pending == in_jobs - set(state_jobs(processed_shop, "coating", "completed"))
    with_coating = {j["job_id"] for j in jobs_of(api, operation="coating")}
    assert with_coating == {
        r["job_id"]
        for r in processed_shop.rows(
            processed_shop.jm, "SELECT job_id FROM job_operation_state WHERE operation = 'coating'"
        )
    }
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert jobs_of(api, updated_since=future) == []
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    recent = [j["job_id"] for j in jobs_of(api, updated_since=past, operation="coating")]
    assert set(recent) == with_coating


# ----- CSV ---------------------------------------------------------------------------------
def read_csv(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text)))


def test_feed_as_csv_round_trips_and_exports_to_the_end(
    api: httpx.Client, processed_shop: Shop
) -> None:
    as_json, _ = follow_feed(api, limit=1000)
    rows = read_csv(api.get("/api/status-updates", headers={**READ, **CSV}))
    assert [int(r["update_id"]) for r in rows] == [u["update_id"] for u in as_json]
    for row, update in zip(rows, as_json, strict=True):
        assert row["job_id"] == update["job_id"]
        assert row["notes"] == (update["notes"] or "")
        assert row["applied"] == str(update["applied"]).lower()  # true/false, as in JSON
        assert row["status"] == (update["status"] or "")
    page = api.get("/api/status-updates", params={"after": 0, "limit": 2}, headers={**READ, **CSV})
    paged = read_csv(page)
    assert [int(r["update_id"]) for r in paged] == [u["update_id"] for u in as_json[:2]]
    assert page.headers["jobstatus-next-after"] == paged[-1]["update_id"]


@pytest.mark.parametrize(
    ("accept", "csv_expected"),
    [
        ("text/csv", True),
        ("text/csv;q=0.9, */*;q=0.1", True),
        ("application/json;q=0.9, text/csv;q=0.1", False),
        ("text/csv;q=0", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_csv_is_chosen_by_the_accept_header_q_values(
    api: httpx.Client, accept: str, csv_expected: bool
) -> None:
    answer = api.get("/api/status-updates", params={"limit": 1}, headers={**READ, "Accept": accept})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv") is csv_expected, accept


def test_csv_answers_say_how_fresh_they_are_in_a_header(api: httpx.Client) -> None:
    """A CSV body has no room for as_of: the Jobstatus-As-Of header carries the same object."""
    for path in ("/api/status-updates", "/api/jobs"):
        as_json = api.get(path, headers=READ).json()["as_of"]
        answer = api.get(path, params={"limit": 1}, headers={**READ, **CSV})
        assert json.loads(answer.headers["jobstatus-as-of"]) == as_json, path


def test_jobs_as_csv_with_the_same_filters_and_paging(api: httpx.Client) -> None:
    as_json = jobs_of(api, operation="coating", status="completed")
    rows = read_csv(
        api.get(
            "/api/jobs",
            params={"operation": "coating", "status": "completed"},
            headers={**READ, **CSV},
        )
    )
    assert [r["job_id"] for r in rows] == [j["job_id"] for j in as_json]
    everything = read_csv(api.get("/api/jobs", headers={**READ, **CSV}))
    first = read_csv(api.get("/api/jobs", params={"limit": 2}, headers={**READ, **CSV}))
    rest = read_csv(
        api.get("/api/jobs", params={"after": first[-1]["job_id"]}, headers={**READ, **CSV})
    )
    assert [r["job_id"] for r in first + rest] == [r["job_id"] for r in everything]
    assert "coating=completed" in rows[0]["operations"]


# ----- bad input ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "params", "says"),
    [
        ("/api/status-updates", {"after": "-1"}, "after"),
        ("/api/status-updates", {"after": "abc"}, "after"),
        ("/api/status-updates", {"after": str(2**64)}, "after"),
        ("/api/status-updates", {"limit": "0"}, "limit"),
        ("/api/status-updates", {"limit": "1001"}, "limit"),
        ("/api/jobs", {"status": "done"}, "status"),
        ("/api/jobs", {"operation": "Coating!"}, "operation"),
        ("/api/jobs", {"operation": "laminate"}, "unknown operation laminate"),
        ("/api/jobs", {"operation": "coating", "status": "partial"}, "print only"),
        ("/api/jobs", {"updated_since": "yesterday"}, "updated_since"),
        ("/api/jobs", {"updated_since": "9999-12-31T23:59:59.999999-23:59"}, "updated_since"),
        ("/api/jobs", {"updated_since": "0001-01-01T00:00:00+23:59"}, "updated_since"),
        ("/api/jobs", {"after": "a\x01b"}, "after"),
        ("/api/jobs", {"limit": "x"}, "limit"),
    ],
)
def test_bad_parameters_are_422_saying_which(
    api: httpx.Client, path: str, params: dict, says: str
) -> None:
    answer = api.get(path, params=params, headers=READ)
    assert answer.status_code == 422, answer.text
    assert says in answer.text


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/x"},
        {"url": "not a url"},
        {"url": "http://example.com/x", "operations": ["nope"]},
        {"url": "http://example.com/x", "extra": 1},
        {},
        # Accepted once, then never deliverable (or worse, stopping every delivery).
        {"url": "http://127.0.0.1:18998/x\n"},
        {"url": " http://example.com/x"},
        {"url": "http://example.com/a b"},
        {"url": "http://example.com/x\t"},
        {"url": "http:///path"},
        {"url": "http:example.com"},
        {"url": "http://:80/x"},
        {"url": "mailto:a@example.com"},
        # Postgres text holds no NUL: a 422, not a 500.
        {"url": "http://example.com/x\u0000"},
        {"url": "http://example.com/x", "operations": []},
        # Secrets are the server's: a client's own is refused, whatever it is.
        {"url": "http://example.com/x", "secret": "s3cret-s3cret-s3cret-s3cret"},
        {"url": "http://example.com/x", "secret": "s3cret\u0000"},
        {"url": "http://example.com/x", "secret": None},
    ],
)
def test_bad_webhooks_are_422(api: httpx.Client, body: dict) -> None:
    assert api.post("/api/webhooks", json=body, headers=WRITE).status_code == 422


def test_a_client_chosen_secret_is_refused_saying_why(api: httpx.Client) -> None:
    body = {"url": "https://mis.example/hook", "secret": "my-own-secret-123"}
    refused = api.post("/api/webhooks", json=body, headers=WRITE)
    assert refused.status_code == 422
    assert "the server generates it" in refused.text and "my-own-secret" not in refused.text


def test_the_secret_is_the_server_s_shown_once_and_never_again(
    api: httpx.Client, processed_shop: Shop
) -> None:
    created = api.post(
        "/api/webhooks",
        json={"url": "https://example.com/hook", "operations": ["coating"]},
        headers=WRITE,
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
    webhook_id = created.json()["id"]
    stored = processed_shop.scalar(
        processed_shop.jm,
        "SELECT secret FROM webhook_subscriptions WHERE subscription_id = :i",
        i=webhook_id,
    )
    assert stored == secret, "the secret that signs is the one the client was given"
    other = api.post("/api/webhooks", json={"url": "https://example.com/hook"}, headers=WRITE)
    assert other.json()["secret"] != secret
    listed = api.get("/api/webhooks", headers=WRITE)
    assert secret not in listed.text and "whsec_" not in listed.text
    assert any(w["id"] == webhook_id for w in listed.json())
    for gone in (webhook_id, other.json()["id"]):
        assert api.delete(f"/api/webhooks/{gone}", headers=WRITE).status_code == 204
    assert api.delete(f"/api/webhooks/{webhook_id}", headers=WRITE).status_code == 404
    assert all(w["id"] != webhook_id for w in api.get("/api/webhooks", headers=WRITE).json())
    big = {"url": "https://example.com/" + "a" * 70_000}
    refused = api.post("/api/webhooks", json=big, headers=WRITE)
    # The body is left unread: the connection is closed, never reused for the next request.
    assert refused.status_code == 413 and refused.headers["connection"] == "close"


def test_rotating_a_secret_returns_a_new_one_once_and_keeps_the_old_signing_a_day(
    api: httpx.Client, processed_shop: Shop
) -> None:
    created = api.post("/api/webhooks", json={"url": "https://mis.example/r"}, headers=WRITE)
    webhook_id, first = created.json()["id"], created.json()["secret"]
    rotated = api.post(f"/api/webhooks/{webhook_id}/rotate-secret", headers=WRITE)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["id"] == webhook_id and body["secret"].startswith("whsec_")
    assert body["secret"] != first
    rotated_at = datetime.fromisoformat(body["secret_rotated_at"])
    expires = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert expires - rotated_at == timedelta(hours=24)  # JOBSTATUS_WEBHOOK_SECRET_OVERLAP_SECONDS
    stored = processed_shop.rows(
        processed_shop.jm,
        "SELECT secret, previous_secret FROM webhook_subscriptions WHERE subscription_id = :i",
        i=webhook_id,
    )
    assert stored == [{"secret": body["secret"], "previous_secret": first}]
    (listed,) = [w for w in api.get("/api/webhooks", headers=WRITE).json() if w["id"] == webhook_id]
    assert listed["previous_secret_expires_at"] == body["previous_secret_expires_at"]
    assert first not in json.dumps(listed) and body["secret"] not in json.dumps(listed)
    assert api.delete(f"/api/webhooks/{webhook_id}", headers=WRITE).status_code == 204
    gone = api.post(f"/api/webhooks/{webhook_id}/rotate-secret", headers=WRITE)
    assert gone.status_code == 404


@pytest.fixture(scope="module")
def guarded_api(processed_shop: Shop, instance: dg.DagsterInstance) -> Iterator[httpx.Client]:
    """The API as deployed: private webhook targets refused (the default)."""
    app = make_app(processed_shop, instance, token=WRITE_TOKEN, read_token=READ_TOKEN)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/hook", "link-local"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("https://192.168.1.10/hook", "private"),
        ("http://[fd00::5]/hook", "private"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
    ],
)
def test_internal_targets_are_refused_unless_allowed(
    guarded_api: httpx.Client, api: httpx.Client, url: str, says: str
) -> None:
    refused = guarded_api.post("/api/webhooks", json={"url": url}, headers=WRITE)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "refused webhook target" in detail and says in detail, detail
    assert "JOBSTATUS_WEBHOOK_ALLOW_PRIVATE" in detail
    allowed = api.post("/api/webhooks", json={"url": url}, headers=WRITE)  # allow_private
    assert allowed.status_code == 201, allowed.text
    assert api.delete(f"/api/webhooks/{allowed.json()['id']}", headers=WRITE).status_code == 204


def test_a_public_or_unresolvable_host_is_accepted_and_checked_again_when_delivered(
    guarded_api: httpx.Client,
) -> None:
    for url in ("https://93.184.215.14/hook", "https://mis.example/hook"):
        created = guarded_api.post("/api/webhooks", json={"url": url}, headers=WRITE)
        assert created.status_code == 201, created.text
        webhook_id = created.json()["id"]
        assert guarded_api.delete(f"/api/webhooks/{webhook_id}", headers=WRITE).status_code == 204


def test_credentials_in_a_webhook_url_are_never_shown_back(
    api: httpx.Client, processed_shop: Shop
) -> None:
    url = "https://mis:pa55-w0rd@mis.example/hook"
    created = api.post("/api/webhooks", json={"url": url}, headers=WRITE)
    assert created.status_code == 201, created.text
    assert created.json()["url"] == "https://***@mis.example/hook"
    listed = api.get("/api/webhooks", headers=WRITE)
    assert "pa55-w0rd" not in listed.text and "https://***@mis.example/hook" in listed.text
    assert "pa55-w0rd" not in api.get("/openapi.json").text
    stored = processed_shop.scalar(
        processed_shop.jm,
        "SELECT url FROM webhook_subscriptions WHERE subscription_id = :i",
        i=created.json()["id"],
    )
    assert stored == url, "kept as given: deliveries send it as Basic auth"
    assert api.delete(f"/api/webhooks/{created.json()['id']}", headers=WRITE).status_code == 204


def test_webhook_url_is_stored_normalised_and_operations_de_duplicated(
    api: httpx.Client, processed_shop: Shop
) -> None:
    created = api.post(
        "/api/webhooks",
        json={
            "url": "HTTPS://MIS.Example:443/Hook?x=1",
            "operations": ["coating", "print", "coating"],
        },
        headers=WRITE,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["url"] == "https://mis.example/Hook?x=1"
    assert body["operations"] == ["coating", "print"]
    stored = processed_shop.rows(
        processed_shop.jm,
        "SELECT url, operations FROM webhook_subscriptions WHERE subscription_id = :i",
        i=body["id"],
    )
    assert stored == [{"url": "https://mis.example/Hook?x=1", "operations": ["coating", "print"]}]
    empty = api.post(
        "/api/webhooks",
        json={"url": "https://mis.example/", "operations": []},
        headers=WRITE,
    )
    assert empty.status_code == 422 and "omit operations" in empty.text
    assert api.delete(f"/api/webhooks/{body['id']}", headers=WRITE).status_code == 204


def test_a_subscription_its_receiver_ended_is_listed_as_disabled_saying_why(
    api: httpx.Client, processed_shop: Shop
) -> None:
    created = api.post("/api/webhooks", json={"url": "https://mis.example/ended"}, headers=WRITE)
    webhook_id = created.json()["id"]
    (listed,) = [w for w in api.get("/api/webhooks", headers=WRITE).json() if w["id"] == webhook_id]
    assert listed["disabled_at"] is None and listed["disabled_reason"] is None
    # What a delivery run does when the receiver answers 410 Gone (test_webhooks.py).
    with processed_shop.jm.begin() as conn:
        outbox.disable_subscription(conn, webhook_id, "the receiver answered 410 Gone")
    (listed,) = [w for w in api.get("/api/webhooks", headers=WRITE).json() if w["id"] == webhook_id]
    assert listed["disabled_at"] is not None and listed["disabled_at"].endswith("Z")
    assert listed["disabled_reason"] == "the receiver answered 410 Gone"
    assert api.delete(f"/api/webhooks/{webhook_id}", headers=WRITE).status_code == 204
