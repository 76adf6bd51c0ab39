"""The read side (``jobstatus status``, ``GET /api/job-status``, ``GET /api/jobs`` and its CSV)
reads what the writer wrote: identifiers compared trimmed (R4), operation names of
``operation_codes`` normalised (R8), one job per trimmed id, and a ``jobs.operations`` value the
shop left as something other than a JSON object read as no flags rather than a 500 (R20).

One shop per module, processed in this process; requests go through FastAPI's TestClient.
"""

import csv
import io
import json
import warnings
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from jobstatus_dagster.api import create_app
from jobstatus_dagster.io import feed
from jobstatus_dagster.io.feed import JobFilter, export_jobs, read_jobs
from jobstatus_dagster.io.status import JOB_OPERATIONS_SQL, read_job_status
from jobstatus_dagster_tests.shop import T0, Shop

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PADDED = "3009_4009"  # jobs: ' 3009_4009', job_operations: '3009_4009 '
TWICE = "3009_4010"  # jobs holds it twice: '3009_4010' and '3009_4010\t'
PENDING = "3009_4011"  # in jobs, never printed
SPELLED = "3009_4013"  # plain ids; operation_codes says 'Print' and ' Kiss Cut'
ODD_JSON = "3009_4012"  # jobs.operations set to JSON that is not an object


@pytest.fixture(scope="module")
def read_shop(shop: Shop, instance: dg.DagsterInstance) -> Shop:
    # R8: the shop spells the names its own way; the writer normalises them (io/sources.py).
    shop.execute(
        shop.logs, "UPDATE operation_codes SET operation = 'Print' WHERE operation = 'print'"
    )
    shop.execute(
        shop.logs, "UPDATE operation_codes SET operation = ' Kiss Cut' WHERE operation = 'kiss_cut'"
    )
    shop.add_job(f" {PADDED}")
    shop.add_job(TWICE)
    shop.add_job(f"{TWICE}\t")
    shop.add_job(PENDING)
    shop.add_job(SPELLED)
    shop.add_job(ODD_JSON)
    for job, spelled in ((PADDED, f"{PADDED} "), (TWICE, TWICE), (SPELLED, SPELLED)):
        for op in ("op001", "op006"):
            shop.add_job_operation(spelled, " 1" if job == PADDED else "1", op)
    shop.add_job_operation(PENDING, "1")
    shop.map_files("R-I1", [f"FILE_1_Labex_{PADDED}_1", f"FILE_1_Labex_{TWICE}_1"])
    shop.map_files("R-I2", [f"FILE_1_Labex_{SPELLED}_1", f"FILE_1_Labex_{ODD_JSON}_1"])
    shop.map_files("R-I3", [f"FILE_1_Labex_{PENDING}_1"])
    shop.print_event("R-I1", "PRINTED")
    shop.print_event("R-I2", "PRINTED")
    shop.scan(f"{SPELLED}_1", ["kiss cut"], at=T0.replace(hour=12))
    shop.scan(f"{PADDED}_1", ["Kiss-Cut"], at=T0.replace(hour=12))
    shop.process(instance, "print_os")
    shop.process(instance, "scanner")
    return shop


@pytest.fixture(scope="module")
def app(read_shop: Shop, instance: dg.DagsterInstance) -> FastAPI:
    return create_app(
        read_shop.definitions(),
        instance,
        read_shop.urls.jobmanager,
        read_shop.urls.logs,
        token=TOKEN,
        read_token=TOKEN,
    )


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def jobs_of(client: TestClient, limit: int = 1, **params: object) -> list[dict]:
    """Every page of /api/jobs with these filters, followed to the end."""
    found: list[dict] = []
    after = None
    while True:
        query = {**params, "limit": limit, **({"after": after} if after else {})}
        page = client.get("/api/jobs", params=query, headers=AUTH)
        assert page.status_code == 200, page.text
        body = page.json()
        found += body["jobs"]
        after = body["next_after"]
        if after is None:
            return found


def csv_ids(client: TestClient, **params: object) -> list[str]:
    response = client.get("/api/jobs", params=params, headers={**AUTH, "Accept": "text/csv"})
    assert response.status_code == 200, response.text
    return [row["job_id"] for row in csv.DictReader(io.StringIO(response.text))]


def print_row(status: dict) -> dict:
    (version,) = status["versions"]
    return version


# ----- R4: ids padded in the shop's tables ---------------------------------------------------
def test_r4_status_reads_a_job_whose_ids_are_padded_in_the_shops_tables(
    read_shop: Shop, client: TestClient
) -> None:
    # The writer matched them trimmed: jobs.operations and the job_operations row are written.
    assert read_shop.job_operations_json(f" {PADDED}") == {"print": True, "kiss_cut": True}
    status = read_job_status(read_shop.jm, read_shop.logs, PADDED)
    assert status is not None
    assert status["job_id"] == PADDED
    assert status["in_jobs_table"] is True
    assert status["current_status"] == {"print": True, "kiss_cut": True}
    version = print_row(status)
    assert version["version_tag"] == "1"
    assert (version["status"], version["printed"], version["total"]) == ("completed", 1, 1)
    assert {(o["operation"], o["status"]) for o in version["operations"]} == {
        ("print", "completed"),
        ("kiss_cut", "completed"),
    }
    answer = client.get(f"/api/job-status/{PADDED}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["in_jobs_table"] is True
    assert body["current_status"] == {"print": True, "kiss_cut": True}
    assert print_row(body)["status"] == "completed"
    # The id asked for is an identifier too: padded, it is the same job.
    assert read_job_status(read_shop.jm, read_shop.logs, f"\t{PADDED} \n") == status


def test_r4_a_job_the_jobs_table_holds_twice_padded_reads_once(read_shop: Shop) -> None:
    status = read_job_status(read_shop.jm, read_shop.logs, TWICE)
    assert status is not None and status["in_jobs_table"] is True
    assert status["current_status"] == {"print": True}
    assert print_row(status)["status"] == "completed"


@pytest.mark.parametrize("limit", [1, 2, 100])
def test_r4_job_list_shows_each_trimmed_id_once_in_keyset_pages(
    read_shop: Shop, client: TestClient, limit: int
) -> None:
    listed = jobs_of(client, limit=limit)
    ids = [job["job_id"] for job in listed]
    assert ids == sorted(set(ids)), "one job per trimmed id, in job-id order"
    assert ids == [PADDED, TWICE, PENDING, ODD_JSON, SPELLED]
    with read_shop.jm.connect() as conn:
        assert ids == feed.known_job_ids(conn)
    padded = next(job for job in listed if job["job_id"] == PADDED)
    assert padded["in_jobs_table"] is True
    assert padded["current_status"] == {"print": True, "kiss_cut": True}
    assert {o["operation"]: o["status"] for o in padded["operations"]} == {
        "print": "completed",
        "kiss_cut": "completed",
    }


def test_r4_job_list_filters_read_the_state_of_padded_ids(client: TestClient) -> None:
    completed = [j["job_id"] for j in jobs_of(client, status="completed")]
    assert completed == [PADDED, TWICE, ODD_JSON, SPELLED]
    pending = [j["job_id"] for j in jobs_of(client, status="pending")]
    assert pending == [PENDING], "a completed print is not pending, whatever the padding"
    kiss_cut_pending = [
        j["job_id"] for j in jobs_of(client, status="pending", operation="kiss_cut")
    ]
    assert kiss_cut_pending == [TWICE, PENDING, ODD_JSON]


def test_r4_csv_exports_each_trimmed_id_once(client: TestClient) -> None:
    assert csv_ids(client) == [PADDED, TWICE, PENDING, ODD_JSON, SPELLED]
    assert csv_ids(client, status="pending") == [PENDING]
    assert csv_ids(client, limit=2) == [PADDED, TWICE]
    assert csv_ids(client, limit=2, after=TWICE) == [PENDING, ODD_JSON]


def test_r4_exports_page_by_trimmed_id(read_shop: Shop) -> None:
    pages = list(export_jobs(read_shop.jm, JobFilter(), "", batch=2))
    assert [[j["job_id"] for j in page] for page in pages] == [
        [PADDED, TWICE],
        [PENDING, ODD_JSON],
        [SPELLED],
    ]
    with read_shop.jm.connect() as conn:
        after_padded = read_jobs(conn, JobFilter(), PADDED, 10)
    assert [j["job_id"] for j in after_padded] == [TWICE, PENDING, ODD_JSON, SPELLED]


def test_r4_trimmed_job_lookups_use_the_trimmed_indexes(read_shop: Shop) -> None:
    """On a shop with many jobs, a page reads the padded rows through the hash index on the
    padded ones and each job's row through the trimmed hash index, never scanning ``jobs``
    (R1: no btree on the shop's ids). Rolled back: the other tests see the small shop."""
    with read_shop.jm.connect() as conn, conn.begin() as transaction:
        conn.exec_driver_sql(
            "INSERT INTO jobs (job_id) SELECT g || '_' || g FROM generate_series(1, 20000) g"
        )
        conn.exec_driver_sql("ANALYZE jobs")
        for job_filter in (JobFilter(), JobFilter(status="pending")):
            statement, params = job_filter.query()
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    sa.text(f"EXPLAIN {statement.text}"), {**params, "after": "5", "limit": 100}
                )
            )
            assert "idx_jobs_padded_ids" in plan, plan
            assert "idx_jobs_job_id_trimmed" in plan, plan
            assert "Seq Scan on jobs" not in plan, plan
        transaction.rollback()


# ----- R8: operation names the shop spelled its own way --------------------------------------
def test_r8_status_reads_an_operation_the_shop_spelled_Print(
    read_shop: Shop, client: TestClient
) -> None:
    assert read_shop.job_print_row(SPELLED, "1")["status"] == "completed"  # the writer's
    status = read_job_status(read_shop.jm, read_shop.logs, SPELLED)
    version = print_row(status)
    assert version["status"] == "completed"
    assert {(o["operation"], o["operation_id"]) for o in version["operations"]} == {
        ("print", "op001"),
        ("kiss_cut", "op006"),
    }
    body = client.get(f"/api/job-status/{SPELLED}", headers=AUTH).json()
    assert print_row(body)["status"] == "completed"


def test_r8_job_list_knows_an_operation_the_shop_spelled_Kiss_Cut(client: TestClient) -> None:
    completed = client.get(
        "/api/jobs", params={"operation": "kiss_cut", "status": "completed"}, headers=AUTH
    )
    assert completed.status_code == 200, completed.text
    assert [j["job_id"] for j in completed.json()["jobs"]] == [PADDED, SPELLED]
    unknown = client.get("/api/jobs", params={"operation": "laminate"}, headers=AUTH)
    assert unknown.status_code == 422
    assert "kiss_cut" in unknown.json()["detail"] and "Kiss" not in unknown.json()["detail"]


# ----- R20: jobs.operations that is not a JSON object ----------------------------------------
@pytest.mark.parametrize("value", [None, "print", [1, 2], 3, True])
def test_r20_jobs_operations_that_is_not_an_object_reads_as_no_flags(
    read_shop: Shop, client: TestClient, value: object
) -> None:
    read_shop.execute(
        read_shop.jm,
        "UPDATE jobs SET operations = CAST(:v AS jsonb) WHERE job_id = :j",
        {"v": json.dumps(value), "j": ODD_JSON},
    )
    status = client.get(f"/api/job-status/{ODD_JSON}", headers=AUTH)
    assert status.status_code == 200, status.text
    assert status.json()["current_status"] == {}
    assert status.json()["in_jobs_table"] is True
    assert (print_row(status.json())["printed"], print_row(status.json())["total"]) == (1, 1)
    listed = client.get("/api/jobs", params={"after": PENDING, "limit": 1}, headers=AUTH)
    assert listed.status_code == 200, listed.text
    (job,) = listed.json()["jobs"]
    assert (job["job_id"], job["current_status"]) == (ODD_JSON, {})
    assert {o["operation"] for o in job["operations"]} == {"print"}
    assert csv_ids(client, limit=1, after=PENDING) == [ODD_JSON]


def test_r1_r4_a_jobs_status_reads_its_operation_rows_through_the_trimmed_hash_index(
    read_shop: Shop,
) -> None:
    """On many job_operations rows, a status reads one job's rows through the hash index on the
    trimmed job id (logs 0016), which accepts ids of any length (R1). Rolled back."""
    with read_shop.logs.connect() as conn, conn.begin() as transaction:
        conn.exec_driver_sql(
            "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id)"
            " SELECT 'r' || g, g || '_' || g, '1', 'op001' FROM generate_series(1, 20000) g"
        )
        conn.exec_driver_sql("ANALYZE job_operations")
        plan = "\n".join(
            r[0] for r in conn.execute(sa.text(f"EXPLAIN {JOB_OPERATIONS_SQL.text}"), {"j": "7_7"})
        )
        assert "idx_job_operations_job_trimmed" in plan, plan
        transaction.rollback()


def test_r20_an_operation_row_with_no_version_tag_reads_without_a_500(
    read_shop: Shop, client: TestClient
) -> None:
    """The shop's job_operations row of a job with a NULL version_tag (found by the hostile-data
    property test: sorting the versions raised TypeError)."""
    read_shop.execute(
        read_shop.logs,
        "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id)"
        " VALUES ('no-version-row', :j, NULL, 'op003')",
        {"j": PENDING},
    )
    status = client.get(f"/api/job-status/{PENDING}", headers=AUTH)
    assert status.status_code == 200, status.text
    tags = [v["version_tag"] for v in status.json()["versions"]]
    assert tags == [None, "1"]
