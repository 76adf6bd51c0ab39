"""Review of the convergence design (issue 12): each test is a concrete schedule that breaks a
rule of docs/rules.md on ef1e090. They drive the product's own planners and writer through the
harness of jobstatus_testkit/convergence.py (no Dagster run), and compare with a from-scratch run where R22 applies."""

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from jobstatus_dagster.core.plan import PRINT_OS, SCANNER
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.source import SOURCE_NAMES
from jobstatus_testkit.convergence import (
    OPERATION_IDS,
    T0,
    Env,
    ShopData,
    _diff,
    open_env,
)

J, K = "100_200", "101_201"
PRINT_OP, COATING = "op001", "op003"


@pytest.fixture(scope="module")
def env(urls: DatabaseUrls) -> Iterator[Env]:
    with open_env(urls) as opened:
        yield opened


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def shop(**fields: object) -> ShopData:
    base: dict = dict(
        jobs=[],
        in_jobs=set(),
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


def rows(engine: sa.Engine, sql: str, **params: object) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]


def process_all(env: Env, data: ShopData) -> None:
    """Commit every source row (prints first, in id order) and drain both sources."""
    order = [(PRINT_OS, p[0]) for p in data.prints] + [(SCANNER, s[0]) for s in data.scans]
    env.reset()
    env.write_reference(data)
    env.commit(data, order)
    for source in SOURCE_NAMES:
        env.drain(source)


def differences_from_scratch(env: Env, data: ShopData) -> list[str]:
    reached = env.state()
    env.forget_processing(data)
    for source in SOURCE_NAMES:
        env.drain(source)
    return _diff("differs from scratch", env.state(), reached)


def audit(env: Env, job: str) -> dict[tuple[str, int, str, str], dict]:
    found = rows(
        env.jm,
        "SELECT source_type, source_id, version_tag, operation, applied, notes"
        " FROM job_status_updates WHERE job_id = :j AND withdrawn_at IS NULL",
        j=job,
    )
    return {(a["source_type"], a["source_id"], a["version_tag"], a["operation"]): a for a in found}


def job_row(env: Env, job: str, version: str, code: str) -> dict:
    (row,) = rows(
        env.logs,
        "SELECT status, completed_by, source_id FROM job_operations"
        " WHERE job_id = :j AND version_tag = :v AND operation_id = :o",
        j=job,
        v=version,
        o=code,
    )
    return row


# ----- 1. R17/R23/R15: the scanner verdict is per (job, operation), the target per version --
def test_r23_verdict_of_a_scan_that_is_its_version_rows_value(env: Env) -> None:
    """Two scans of the same job, different versions: the older one (version 2) is the only
    evidence of job_operations (J, 2, coating) and is what that row cites, yet its audit row
    says "not applied: scanner #1 holds coating". Processing one at a time, scan 2 would have
    written the row: R15 conflicts are per (row, operation)."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        job_ops={(J, "1", COATING): None, (J, "2", COATING): None},
        scans=[
            (1, f"{J}_1", at(20), json.dumps({"coating": True})),
            (2, f"{J}_2", at(10), json.dumps({"coating": True})),
        ],
    )
    process_all(env, data)
    assert job_row(env, J, "2", COATING)["source_id"] == 2  # the row cites scan 2 ...
    verdict = audit(env, J)[(SCANNER, 2, "2", "coating")]
    assert verdict["applied"] is True, verdict["notes"]  # ... so scan 2 was applied


# ----- 2. R15/R17: scanner print on a version PrintOS holds nothing for --------------------
def test_r15_scanner_print_of_a_version_print_os_never_printed(env: Env) -> None:
    """PrintOS printed version 1; the scanner reports version 2 printed. job_operations
    (J, 2, print) takes the scan (PrintOS has no write for that row), yet the audit says
    "not applied: the press's own print status takes precedence": the verdict looks at the job, the row at the version."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        files={"IMP-0": [f"FILE_1_Labex_{J}_0"], "IMP-1": [f"FILE_2_Labex_{J}_0"]},
        job_ops={(J, "1", PRINT_OP): None, (J, "2", PRINT_OP): None},
        prints=[(1, "IMP-0", "PRINTED", 1, at(5), at(6))],
        scans=[(1, f"{J}_2", at(20), json.dumps({"print": True}))],
    )
    process_all(env, data)
    row = job_row(env, J, "2", PRINT_OP)
    verdict = audit(env, J)[(SCANNER, 1, "2", "print")]
    assert (row["completed_by"], row["source_id"]) == ("scanner", 1)
    assert verdict["applied"] is True, verdict["notes"]


# ----- 3. R4/R16: identifiers of the target tables are not trimmed -------------------------
def test_r4_imposition_operations_row_with_trailing_space(env: Env) -> None:
    """R4: identifiers read from any table compare trimmed. The shop's imposition_operations
    row is 'IMP-0 ': the event of 'IMP-0' finds no row and records missing_operation_row."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        files={"IMP-0": [f"FILE_1_Labex_{J}_0"]},
        job_ops={(J, "1", PRINT_OP): None},
        imposition_ops={("IMP-0 ", PRINT_OP): None},
        prints=[(1, "IMP-0", "PRINTED", 1, at(5), at(6))],
    )
    process_all(env, data)
    (row,) = rows(env.logs, "SELECT status, source_id FROM imposition_operations")
    failures = rows(env.jm, "SELECT reason FROM processing_failures WHERE resolved_at IS NULL")
    assert row == {"status": "completed", "source_id": 1}
    assert failures == []


def test_r4_job_operations_row_with_trailing_space(env: Env) -> None:
    """The same for job_operations.version_tag ('1 ' in the shop's row)."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        job_ops={(J, "1 ", COATING): None},
        scans=[(1, f"{J}_1", at(20), json.dumps({"coating": True}))],
    )
    process_all(env, data)
    (row,) = rows(env.logs, "SELECT status, source_id FROM job_operations")
    assert row == {"status": "completed", "source_id": 1}


# ----- 4. R22b: an operation code the shop changes never withdraws the old code's row -------
def test_r22b_changed_operation_code_withdraws_the_old_row(env: Env) -> None:
    """coating op003 → op013 in operation_codes, then a backfill of the scan: a from-scratch
    run leaves op003's row as the shop had it ('legacy'); the backfill writes op013 and leaves
    op003 'completed' by the scan for ever."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        job_ops={(J, "1", COATING): "legacy", (J, "1", "op013"): "legacy13"},
        scans=[(1, f"{J}_1", at(20), json.dumps({"coating": True}))],
    )
    process_all(env, data)
    data.codes["coating"] = "op013"
    env.write_reference(data)
    env.backfill_all(SCANNER)
    problems = differences_from_scratch(env, data)
    assert not problems, "\n".join(problems)


# ----- 5. R15/R23: two operation names sharing one code ------------------------------------
def test_r15_two_names_of_one_code_the_later_scan_wins(env: Env) -> None:
    """operation_codes maps 'laminate' and 'lamination' to op011 (the shop's table allows it).
    The later scan (t=20, 'lamination') must hold job_operations op011 (R15); the projection
    keys values by name, so both are UPDATEd into the same row and Postgres keeps either one
    (here the older scan 2)."""
    codes = {**OPERATION_IDS, "laminate": "op011", "lamination": "op011"}
    data = shop(
        jobs=[J],
        in_jobs={J},
        codes=codes,
        job_ops={(J, "1", "op011"): None},
        scans=[
            (1, f"{J}_1", at(20), json.dumps({"lamination": True})),
            (2, f"{J}_1", at(10), json.dumps({"laminate": True})),
        ],
    )
    process_all(env, data)
    assert job_row(env, J, "1", "op011")["source_id"] == 1


# ----- 6. R22b: a job whose every mapping row is deleted keeps its print -------------------
def test_r22b_job_removed_from_the_mapping_is_withdrawn(env: Env) -> None:
    """IMP-0 holds J's and K's files and printed; J's mapping row is deleted (not moved), then
    the event is backfilled. The audit row is withdrawn, but J has no files left, so it is not
    among the plan's print_jobs: job_print_state, job_operation_state, jobs.operations and
    job_operations keep 'completed'."""
    data = shop(
        jobs=[J, K],
        in_jobs={J, K},
        files={"IMP-0": [f"FILE_1_Labex_{J}_0", f"FILE_1_Labex_{K}_0"]},
        job_ops={(J, "1", PRINT_OP): None, (K, "1", PRINT_OP): None},
        prints=[(1, "IMP-0", "PRINTED", 1, at(5), at(6))],
    )
    process_all(env, data)
    data.files["IMP-0"] = [f"FILE_1_Labex_{K}_0"]
    env.write_reference(data)
    env.backfill_all(PRINT_OS)
    problems = differences_from_scratch(env, data)
    assert not problems, "\n".join(problems)


def test_r4_jobs_row_with_trailing_space(env: Env) -> None:
    """The same for jobs.job_id ('100_200 '): jobs.operations is never written and the scan
    records missing_job."""
    data = shop(jobs=[J], in_jobs=set(), scans=[(1, f"{J}_1", at(20), '{"coating": true}')])
    env.reset()
    env.write_reference(data)
    with env.jm.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO jobs (job_id, operations) VALUES (:j, '{}')"), {"j": J + " "}
        )
    env.commit(data, [(SCANNER, 1)])
    env.drain(SCANNER)
    (job,) = rows(env.jm, "SELECT operations FROM jobs")
    assert job["operations"] == {"coating": True}
    assert (
        rows(
            env.jm,
            "SELECT reason FROM processing_failures WHERE resolved_at IS NULL"
            " AND reason = 'missing_job'",
        )
        == []
    )


# ----- 7. R20/R18: an out-of-range timestamp poisons the source -----------------------------
@pytest.mark.parametrize(
    ("source", "sql"),
    [
        (PRINT_OS, "UPDATE \"print OS\" SET job_complete_time = 'infinity'"),
        (SCANNER, "UPDATE scanned_codes SET scanned_at = '-infinity'"),
    ],
)
def test_r20_an_infinite_event_time_is_recorded_not_a_crash(
    env: Env, source: str, sql: str
) -> None:
    """Postgres TIMESTAMP accepts 'infinity', '-infinity' and years past 9999; psycopg cannot
    load them into Python, so every run of the window raises DataError: the marker never moves
    and no later row of the source is processed. R20: record it and continue."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        files={"IMP-0": [f"FILE_1_Labex_{J}_0"]},
        job_ops={(J, "1", PRINT_OP): None, (J, "1", COATING): None},
        prints=[(1, "IMP-0", "PRINTED", 1, at(5), at(6)), (2, "IMP-0", "PRINTED", 2, at(7), at(8))],
        scans=[
            (1, f"{J}_1", at(20), json.dumps({"coating": True})),
            (2, f"{J}_1", at(21), json.dumps({"coating": True})),
        ],
    )
    env.reset()
    env.write_reference(data)
    first = [(source, 1)]
    env.commit(data, first)
    with env.jm.begin() as conn:
        conn.execute(sa.text(sql))
    env.commit(data, [(source, 2)])
    env.drain(source)  # raises today
    assert env.unprocessed(source) == 0


# ----- 8. R22b: a re-attribution erases the audit's record of the withdrawal ----------------
def test_r22b_reattribution_keeps_the_withdrawal_in_the_audit(env: Env) -> None:
    """A planner path removed (backfill: the scan's attribution withdrawn, noted), then put
    back (backfill): the same audit row is upserted with withdrawn_at NULL and its notes
    replaced, so nothing shows the withdrawal ever happened (R22b: the audit keeps its history
    and shows the withdrawal)."""
    data = shop(
        jobs=[J],
        in_jobs={J},
        files={"IMP-0": [f"FILE_1_Labex_{J}_0"]},
        runlists={"RL-1": ["IMP-0"]},
        job_ops={(J, "1", COATING): None},
        scans=[(1, "RL-1", at(20), json.dumps({"coating": True}))],
    )
    process_all(env, data)
    data.runlists["RL-1"] = []
    env.write_reference(data)
    env.backfill_all(SCANNER)
    data.runlists["RL-1"] = ["IMP-0"]
    env.write_reference(data)
    env.backfill_all(SCANNER)
    history = rows(
        env.jm,
        "SELECT withdrawn_at, withdrawn_before, notes FROM job_status_updates WHERE job_id = :j",
        j=J,
    )
    # Current again (notes as a from-scratch run gives them), and the withdrawal is kept.
    assert [(h["withdrawn_at"], h["notes"]) for h in history] == [
        (None, "scanned RL-1 on m1; via runlist RL-1")
    ]
    assert history[0]["withdrawn_before"] is not None
