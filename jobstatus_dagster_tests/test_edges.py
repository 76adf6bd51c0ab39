"""Trust at the edges (issue 18): each test is a schedule the audit ran on cad257c that broke a
rule of docs/rules.md. They drive the product's own planners and writer through the harness of
jobstatus_testkit/convergence.py (no Dagster run) and compare with a from-scratch run."""

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from jobstatus_dagster.core.plan import PRINT_OS, SCANNER, Window
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.source import SOURCE_NAMES
from jobstatus_testkit.convergence import OPERATION_IDS, T0, Env, ShopData, _diff, open_env

J = "100_200"
PRINT_OP, COATING = OPERATION_IDS["print"], OPERATION_IDS["coating"]


@pytest.fixture(scope="module")
def env(urls: DatabaseUrls) -> Iterator[Env]:
    with open_env(urls) as opened:
        yield opened


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def shop(**fields: object) -> ShopData:
    base: dict = dict(
        jobs=[J],
        in_jobs={J},
        files={},
        runlists={},
        job_ops={},
        imposition_ops={},
        codes=dict(OPERATION_IDS),
        prints=[],
        scans=[],
    )
    base.update(fields)
    return ShopData(**base)


def start(env: Env, data: ShopData) -> None:
    """A fresh shop holding ``data``'s reference tables and every source row, none processed."""
    env.reset()
    env.write_reference(data)
    env.commit(
        data, [(PRINT_OS, p[0]) for p in data.prints] + [(SCANNER, s[0]) for s in data.scans]
    )


def process(env: Env, source: str, lo: int, hi: int) -> None:
    env.write(env.plan(Window(source, lo, hi)))


def one(engine: sa.Engine, sql: str, **params: object) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(sa.text(sql), params).first()
    return None if row is None else dict(row._mapping)


def job_op(env: Env, job: str, version: str, operation_id: str) -> dict | None:
    return one(
        env.logs,
        "SELECT status, source_id, completed_by, notes FROM job_operations"
        " WHERE btrim(job_id) = :j AND version_tag = :v AND operation_id = :o",
        j=job,
        v=version,
        o=operation_id,
    )


def flags(env: Env, job: str) -> dict:
    found = one(env.jm, "SELECT operations FROM jobs WHERE btrim(job_id) = :j", j=job)
    assert found is not None
    return found["operations"]


def processed_rows(env: Env) -> set[tuple[str, int]]:
    with env.jm.connect() as conn:
        return {
            (r[0], int(r[1]))
            for r in conn.execute(
                sa.text("SELECT source_type, source_id FROM processed_source_rows")
            )
        }


def from_scratch_over_processed(env: Env, data: ShopData) -> list[str]:
    """R22a: the state now against one from-scratch run over the rows processed so far (the
    markers aside: a window that failed may hold one back)."""
    reached = env.state()
    done = processed_rows(env)
    waiting = sorted(env.committed - done)
    env.forget_processing(data)
    with env.jm.begin() as conn:
        for source, table, column in (
            (PRINT_OS, '"print OS"', "id"),
            (SCANNER, "scanned_codes", "scan_id"),
        ):
            keep = [i for s, i in done if s == source]
            conn.execute(
                sa.text(f"DELETE FROM {table} WHERE NOT ({column} = ANY(:keep))"), {"keep": keep}
            )
    for source in SOURCE_NAMES:
        env.drain(source)
    scratch = env.state()
    for state in (reached, scratch):
        del state["markers"]
    env.commit(data, waiting)  # the rows not processed yet are back, still unprocessed
    return _diff("differs from scratch over the processed rows", scratch, reached)


# ----- finding 1: a re-run below rows already processed ---------------------------------------
def test_r22a_rerunning_a_lower_window_keeps_the_rows_processed_above_it(env: Env) -> None:
    """Two files in two impositions, printed at markers 5 and 15: (10,20] runs first (the run of
    (0,10] failed), then (0,10] again. The job stays completed: its history is every row
    processed so far, not the rows below the window's end."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"], "IMP-2": [f"FILE_1_Labex_{J}_b"]},
        job_ops={(J, "1", PRINT_OP): None},
        prints=[
            (1, "IMP-1", "PRINTED", 5, at(1), at(1)),
            (2, "IMP-2", "PRINTED", 15, at(2), at(2)),
        ],
    )
    start(env, data)
    process(env, PRINT_OS, 10, 20)  # the marker stays at 0: (0,10] is not done
    process(env, PRINT_OS, 0, 10)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    assert flags(env, J)["print"] is True
    process(env, PRINT_OS, 0, 10)  # and once more: a re-run changes nothing
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    assert from_scratch_over_processed(env, data) == []


def test_r22a_a_row_committed_late_below_the_marker_counts_once_processed(env: Env) -> None:
    """The history is the rows processed so far: a row committed below the marker but not yet
    processed does not count in another job version's run; it counts when its own run comes."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"], "IMP-2": [f"FILE_1_Labex_{J}_b"]},
        job_ops={(J, "1", PRINT_OP): None},
        prints=[
            (1, "IMP-1", "PRINTED", 5, at(1), at(1)),
            (2, "IMP-2", "PRINTED", 15, at(2), at(2)),
        ],
    )
    env.reset()
    env.write_reference(data)
    env.commit(data, [(PRINT_OS, 2)])
    process(env, PRINT_OS, 10, 20)
    env.commit(data, [(PRINT_OS, 1)])  # committed late, below the marker, not processed
    process(env, PRINT_OS, 15, 15)  # an empty window past the marker: no late row reaches 5
    assert from_scratch_over_processed(env, data) == []
    env.drain(PRINT_OS)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    assert from_scratch_over_processed(env, data) == []
