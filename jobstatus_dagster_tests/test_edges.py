"""Trust at the edges (issue 18): each test is a schedule the audit ran on cad257c that broke a
rule of docs/rules.md. They drive the product's own planners and writer through the harness of
jobstatus_testkit/convergence.py (no Dagster run) and compare with a from-scratch run."""

import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from jobstatus_dagster.core.plan import PRINT_OS, SCANNER, Window
from jobstatus_dagster.db import DatabaseUrls
from jobstatus_dagster.io.status import read_job_status
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


def split_job() -> ShopData:
    """J's two files in two impositions, printed at markers 5 and 15; no failure to retry (a
    retried row would be re-loaded by every run, R20)."""
    return shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"], "IMP-2": [f"FILE_1_Labex_{J}_b"]},
        job_ops={(J, "1", PRINT_OP): None},
        imposition_ops={("IMP-1", PRINT_OP): None, ("IMP-2", PRINT_OP): None},
        prints=[
            (1, "IMP-1", "PRINTED", 5, at(1), at(1)),
            (2, "IMP-2", "PRINTED", 15, at(2), at(2)),
        ],
    )


# ----- finding 1: a re-run below rows already processed ---------------------------------------
def test_r22a_rerunning_a_lower_window_keeps_the_rows_processed_above_it(env: Env) -> None:
    """Two files in two impositions, printed at markers 5 and 15: (10,20] runs first (the run of
    (0,10] failed), then (0,10] again. The job stays completed: its history is every row
    processed so far, not the rows below the window's end."""
    data = split_job()
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
    data = split_job()
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


# ----- finding 2: a deleted source row ----------------------------------------------------------
def delete_source_row(env: Env, source: str, row_id: int) -> None:
    table, column = ('"print OS"', "id") if source == PRINT_OS else ("scanned_codes", "scan_id")
    with env.jm.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {table} WHERE {column} = :i"), {"i": row_id})
    env.committed.discard((source, row_id))


def imposition_op(env: Env, imposition: str, operation_id: str) -> dict | None:
    return one(
        env.logs,
        "SELECT status, source_id, completed_by FROM imposition_operations"
        " WHERE imposition_id = :i AND operation_id = :o",
        i=imposition,
        o=operation_id,
    )


def test_r22b_a_deleted_print_row_is_withdrawn_by_a_backfill_over_its_range(env: Env) -> None:
    """IMP-3 ABORTED at marker 1, PRINTED at marker 2, both processed; the shop deletes the
    PRINTED row; a backfill of (0,2] withdraws it: the imposition and the job say aborted, the
    audit keeps the withdrawn row, and it is no longer a processed row."""
    data = shop(
        files={"IMP-3": [f"FILE_1_Labex_{J}_a"]},
        job_ops={(J, "1", PRINT_OP): "legacy"},
        imposition_ops={("IMP-3", PRINT_OP): None},
        prints=[(1, "IMP-3", "ABORTED", 1, at(1), at(1)), (2, "IMP-3", "PRINTED", 2, at(2), at(2))],
    )
    start(env, data)
    env.drain(PRINT_OS)
    assert imposition_op(env, "IMP-3", PRINT_OP)["status"] == "completed"
    delete_source_row(env, PRINT_OS, 2)
    data.prints.pop()
    env.backfill(PRINT_OS, 0, 2)
    assert imposition_op(env, "IMP-3", PRINT_OP) == {
        "status": "aborted",
        "source_id": 1,
        "completed_by": "print_os",
    }
    assert job_op(env, J, "1", PRINT_OP)["status"] == "aborted"
    assert flags(env, J)["print"] is False
    withdrawn = one(
        env.jm,
        "SELECT count(*) AS n FROM job_status_updates WHERE source_id = 2"
        " AND source_type = 'print_os' AND withdrawn_at IS NOT NULL",
    )
    assert withdrawn["n"] == 1  # the audit keeps its history and shows the withdrawal
    assert (PRINT_OS, 2) not in processed_rows(env)
    assert from_scratch_over_processed(env, data) == []


def test_r22b_a_deleted_scan_is_withdrawn_by_a_backfill_over_its_range(env: Env) -> None:
    """A coating scan of J_1, processed; the shop deletes it; a backfill of its range returns
    job_operations to what it held before and takes coating out of jobs.operations."""
    data = shop(
        files={"IMP-3": [f"FILE_1_Labex_{J}_a"]},
        job_ops={(J, "1", COATING): "legacy"},
        scans=[(1, f"{J}_1", at(5), json.dumps({"coating": True}))],
    )
    start(env, data)
    env.drain(SCANNER)
    assert job_op(env, J, "1", COATING)["status"] == "completed"
    assert flags(env, J)["coating"] is True
    delete_source_row(env, SCANNER, 1)
    data.scans.clear()
    env.backfill(SCANNER, 0, 1)
    assert job_op(env, J, "1", COATING) == {
        "status": "legacy",
        "source_id": None,
        "completed_by": None,
        "notes": None,
    }
    assert "coating" not in flags(env, J)
    assert processed_rows(env) == set()
    assert from_scratch_over_processed(env, data) == []


def test_r22b_a_print_row_whose_marker_the_shop_corrected_is_processed_where_it_is_now(
    env: Env,
) -> None:
    """A row processed at marker 2 whose marker the shop changes to 50: a backfill over its old
    range re-processes it with what it holds now, and it is a processed row at marker 50."""
    data = shop(
        files={"IMP-3": [f"FILE_1_Labex_{J}_a"], "IMP-4": [f"FILE_1_Labex_{J}_b"]},
        job_ops={(J, "1", PRINT_OP): None},
        prints=[(1, "IMP-3", "PRINTED", 1, at(1), at(1)), (2, "IMP-4", "ABORTED", 2, at(2), at(2))],
    )
    start(env, data)
    env.drain(PRINT_OS)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "partial"
    with env.jm.begin() as conn:
        conn.execute(
            sa.text("""UPDATE "print OS" SET marker = 50, status = 'PRINTED' WHERE id = 2""")
        )
    data.prints[1] = (2, "IMP-4", "PRINTED", 50, at(2), at(2))
    env.backfill(PRINT_OS, 0, 2)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    assert (
        one(env.jm, "SELECT marker FROM processed_source_rows WHERE source_id = 2")["marker"] == 50
    )
    assert from_scratch_over_processed(env, data) == []


# ----- finding 7: a withdrawal restores the shop's newest value --------------------------------
@pytest.mark.parametrize("shop_write", ["delete_and_add_again", "write_over_ours"])
def test_r22b_a_value_the_shop_wrote_after_ours_is_the_original_a_withdrawal_restores(
    env: Env, shop_write: str
) -> None:
    """The row held the shop's 'legacy'; a scan wrote it; the shop deleted the row and added it
    again with 'pending' (or wrote 'pending' over ours); a backfill wrote it again; a planner
    correction then withdrew it: the row returns to 'pending', not to 'legacy'."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"]},
        runlists={"RL-1": ["IMP-1"]},
        job_ops={(J, "1", COATING): "legacy"},
        scans=[(1, "RL-1", at(5), json.dumps({"coating": True}))],
    )
    start(env, data)
    env.drain(SCANNER)
    assert job_op(env, J, "1", COATING)["status"] == "completed"
    row_id = f"{J}:1:{COATING}"
    with env.logs.begin() as conn:
        if shop_write == "delete_and_add_again":
            conn.execute(
                sa.text("DELETE FROM job_operations WHERE job_operation_id = :r"), {"r": row_id}
            )
            conn.execute(
                sa.text(
                    "INSERT INTO job_operations (job_operation_id, job_id, version_tag,"
                    " operation_id, status) VALUES (:r, :j, '1', :o, 'pending')"
                ),
                {"r": row_id, "j": J, "o": COATING},
            )
        else:
            conn.execute(
                sa.text(
                    "UPDATE job_operations SET status = 'pending', completed_at = NULL,"
                    " completed_by = NULL, source_id = NULL, notes = NULL"
                    " WHERE job_operation_id = :r"
                ),
                {"r": row_id},
            )
    data.job_ops[(J, "1", COATING)] = "pending"
    env.backfill_all(SCANNER)
    assert job_op(env, J, "1", COATING)["status"] == "completed"
    data.runlists["RL-1"] = []
    env.write_reference(data)
    env.backfill_all(SCANNER)
    assert job_op(env, J, "1", COATING) == {
        "status": "pending",
        "source_id": None,
        "completed_by": None,
        "notes": None,
    }
    assert from_scratch_over_processed(env, data) == []


# ----- finding 5: the print flag follows the highest version, per-version precedence -----------
def two_versions(prints: list, scans: list) -> ShopData:
    return shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"], "IMP-2": [f"FILE_2_Labex_{J}_a"]},
        job_ops={(J, "1", PRINT_OP): None, (J, "2", PRINT_OP): None},
        prints=prints,
        scans=scans,
    )


@pytest.mark.parametrize("first", SOURCE_NAMES)
def test_r12_a_scanned_print_of_the_highest_version_makes_the_flag_true(
    env: Env, first: str
) -> None:
    """PrintOS printed version 1 only; a scan says version 2 printed. PrintOS having no event
    for version 2 is no evidence about it (R15): version 2 is completed by the scan, and the
    flag follows it (R12), whichever source is processed first."""
    data = two_versions(
        prints=[(1, "IMP-1", "PRINTED", 1, at(1), at(1))],
        scans=[(1, f"{J}_2", at(9), json.dumps({"print": True}))],
    )
    start(env, data)
    env.drain(first)
    env.drain(SCANNER if first == PRINT_OS else PRINT_OS)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    assert job_op(env, J, "2", PRINT_OP)["status"] == "completed"
    assert job_op(env, J, "2", PRINT_OP)["completed_by"] == "scanner"
    assert flags(env, J)["print"] is True
    assert from_scratch_over_processed(env, data) == []


def test_r12_a_scanned_print_of_a_lower_version_never_makes_the_flag_true(env: Env) -> None:
    """No PrintOS events; version 2 has files; a scan says version 1 printed: version 1 is
    completed, the flag stays false (version 2 is not printed) and says why."""
    data = two_versions(prints=[], scans=[(1, f"{J}_1", at(9), json.dumps({"print": True}))])
    start(env, data)
    env.drain(SCANNER)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    assert flags(env, J)["print"] is False
    state = one(env.jm, "SELECT version_tag, notes FROM job_operation_state WHERE job_id = :j", j=J)
    assert state == {"version_tag": "2", "notes": "version 2: not printed yet"}
    assert from_scratch_over_processed(env, data) == []


def test_r12_a_press_abort_of_the_highest_version_beats_its_scanned_print(env: Env) -> None:
    """R15 per version: PrintOS aborted version 2, a scan says version 2 printed: the press
    wins for print, so version 2 is aborted and the flag is false."""
    data = two_versions(
        prints=[(1, "IMP-2", "ABORTED", 1, at(1), at(1))],
        scans=[(1, f"{J}_2", at(9), json.dumps({"print": True}))],
    )
    start(env, data)
    env.drain(SCANNER)
    env.drain(PRINT_OS)
    assert job_op(env, J, "2", PRINT_OP)["status"] == "aborted"
    assert flags(env, J)["print"] is False
    assert from_scratch_over_processed(env, data) == []


# ----- finding 8: open failures are a function of the data -------------------------------------
def open_failures(env: Env) -> set[tuple]:
    with env.jm.connect() as conn:
        return {
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT source_type, source_id, reason, subject FROM processing_failures"
                    " WHERE resolved_at IS NULL"
                )
            )
        }


@pytest.mark.parametrize("operation", ["coating", "backscore"])
def test_r22_a_failure_about_a_key_ends_resolved_when_a_later_scan_wins_the_key(
    env: Env, operation: str
) -> None:
    """Two scans of J_1 report an operation whose job_operations row is missing (coating) or
    which has no code (backscore): processed one window each, the first scan's failure is
    superseded by the second's, as in one window; it ends resolved, not open."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"]},
        codes={**OPERATION_IDS, "backscore": None},
        scans=[
            (1, f"{J}_1", at(5), json.dumps([operation])),
            (2, f"{J}_1", at(6), json.dumps([operation])),
        ],
    )
    start(env, data)
    process(env, SCANNER, 0, 1)
    process(env, SCANNER, 1, 2)
    assert open_failures(env) == {
        (
            SCANNER,
            2,
            "unmapped_operation" if operation == "backscore" else "missing_operation_row",
            f"{J}/1/{operation}",
        )
    }
    assert from_scratch_over_processed(env, data) == []


# ----- the review of these fixes: a job left with no print event; two spellings ----------------
def test_r22b_r20_a_deleted_print_row_that_was_its_jobs_only_event_is_withdrawn(env: Env) -> None:
    """IMP-1 holds J's only file; its one PRINTED row (marker 1) is processed: J version 1 is
    completed. The shop deletes that row. R22b: a backfill over its range makes the state a
    from-scratch run over today's data (no print event: J's print row back to its original,
    no print flag). R20: nothing raises.

    The review found the plan raising ``TypeError`` in print_status._older_notes: the gone
    row's job is reached (through its previous attributions) but has no event left."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"]},
        job_ops={(J, "1", PRINT_OP): "legacy"},
        imposition_ops={("IMP-1", PRINT_OP): None},
        prints=[(1, "IMP-1", "PRINTED", 1, at(1), at(1))],
    )
    start(env, data)
    env.drain(PRINT_OS)
    assert flags(env, J)["print"] is True
    delete_source_row(env, PRINT_OS, 1)
    data.prints.clear()
    env.backfill_all(PRINT_OS)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "legacy"
    assert "print" not in flags(env, J)
    assert from_scratch_over_processed(env, data) == []


def test_r21_r20_a_backfill_after_a_file_moved_to_an_unprinted_imposition_does_not_raise(
    env: Env,
) -> None:
    """J's only file sits in IMP-1, which printed (processed). The shop corrects the mapping: the
    file is in IMP-2, which never printed. R21/R22b: a backfill over the event recomputes the
    status (J version 1 has no print status; IMP-1's event is unmapped now). The review found
    the same TypeError: the job reached through its previous attribution has no event left."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"], "IMP-2": []},
        job_ops={(J, "1", PRINT_OP): None},
        prints=[(1, "IMP-1", "PRINTED", 1, at(1), at(1))],
    )
    start(env, data)
    env.drain(PRINT_OS)
    assert job_op(env, J, "1", PRINT_OP)["status"] == "completed"
    data.files = {"IMP-1": [], "IMP-2": [f"FILE_1_Labex_{J}_a"]}
    env.write_reference(data)
    env.backfill_all(PRINT_OS)
    assert job_op(env, J, "1", PRINT_OP)["status"] is None
    assert from_scratch_over_processed(env, data) == []


def test_r4_r20_the_status_read_shows_the_flags_the_writer_wrote_when_one_spelling_is_not_an_object(
    env: Env,
) -> None:
    """jobs holds J twice ('100_200' and '100_200 ', R4: one identifier); the exact spelling's
    operations is the JSON string "n/a", the padded one an object. A coating scan of J_1: the
    writer leaves the string as it is (R20) and writes coating into the padded row, so the
    job's flags are {"coating": true}. GET /api/job-status (read_job_status) shows what the
    writer wrote for that identifier, not the exact spelling's non-object read as {}."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"]},
        job_ops={(J, "1", COATING): None},
        scans=[(1, f"{J}_1", at(5), json.dumps({"coating": True}))],
    )
    start(env, data)
    with env.jm.begin() as conn:
        conn.execute(
            sa.text("UPDATE jobs SET operations = '\"n/a\"'::jsonb WHERE job_id = :j"), {"j": J}
        )
        conn.execute(
            sa.text("INSERT INTO jobs (job_id, operations) VALUES (:j, '{}')"), {"j": J + " "}
        )
    env.drain(SCANNER)
    with env.jm.connect() as conn:
        written = conn.execute(
            sa.text("SELECT operations FROM jobs WHERE job_id = :j"), {"j": J + " "}
        ).scalar_one()
    assert written == {"coating": True}
    assert read_job_status(env.jm, env.logs, J)["current_status"].get("coating") is True


def test_r22b_a_deleted_row_with_no_marker_is_no_longer_processed_after_any_window(
    env: Env,
) -> None:
    """A print row with no marker is processed as a failure (missing_marker); the shop deletes
    it: the next window, whatever its range, resolves its failure and forgets it, as a
    from-scratch run never saw it."""
    data = shop(
        files={"IMP-1": [f"FILE_1_Labex_{J}_a"]},
        prints=[
            (1, "IMP-1", "PRINTED", None, at(1), at(1)),
            (2, "IMP-1", "PRINTED", 5, at(2), at(2)),
        ],
    )
    start(env, data)
    env.drain(PRINT_OS)
    assert (PRINT_OS, 1) in processed_rows(env)
    assert any(f[1] == 1 for f in open_failures(env))
    delete_source_row(env, PRINT_OS, 1)
    data.prints.pop(0)
    process(env, PRINT_OS, 5, 5)
    assert (PRINT_OS, 1) not in processed_rows(env)
    assert not any(f[1] == 1 for f in open_failures(env))
    assert from_scratch_over_processed(env, data) == []
