"""R14, R21–R24 (docs/rules.md): the state is a function of the data, whatever the windowing, order,
overlap or replay. One regression test per finding of the convergence review (issue 12)."""

from datetime import timedelta

import sqlalchemy as sa

from jobstatus_dagster.core.plan import PRINT_OS, SCANNER, Window
from jobstatus_dagster.io.writer import write_plan
from jobstatus_dagster.pipeline.ops import load_window_rows
from jobstatus_dagster.pipeline.print_os import plan_print
from jobstatus_dagster.pipeline.runner import backfill
from jobstatus_dagster_tests.shop import T0, Shop

PRINT_OP, COATING = "op001", "op003"


def job_with_ops(shop: Shop, *ops: str) -> str:
    job = shop.add_job()
    for op in ops or (PRINT_OP,):
        shop.add_job_operation(job, "1", op)
    return job


def file_of(job: str, extra: str = "") -> str:
    return f"FILE_1_Labex_{job}" + (f"_{extra}" if extra else "")


def run_backfill(shop: Shop, instance, source: str, lo: int, hi: int) -> None:
    outcome = backfill(shop.definitions(), instance, source, lo, hi, trigger="test")
    assert outcome.success, outcome.line()


def current_audit(shop: Shop, job: str) -> list[dict]:
    return [a for a in shop.audit(job) if a["withdrawn_at"] is None]


def test_r22b_mapping_correction_withdraws_what_no_event_supports(shop: Shop, instance) -> None:
    """Finding 1: a file moved off a printed imposition; the backfill withdraws its job's print."""
    stays, moves = job_with_ops(shop), job_with_ops(shop)
    shop.map_files(f"{stays}-D", [file_of(stays), file_of(moves)])
    source_id, marker = shop.print_event(f"{stays}-D", "PRINTED")
    shop.process(instance)
    assert shop.job_operations_json(moves) == {"print": True}
    assert shop.job_print_row(moves, "1")["status"] == "completed"

    shop.execute(
        shop.logs,
        "DELETE FROM imposition_file_mapping WHERE file_id = :f",
        {"f": file_of(moves)},
    )
    shop.map_files(f"{stays}-E", [file_of(moves)])
    run_backfill(shop, instance, PRINT_OS, marker - 1, marker)

    # A from-scratch run never reaches the moved job: no print key, the row as it was before.
    assert shop.job_operations_json(moves) == {}
    row = shop.job_print_row(moves, "1")
    assert (row["status"], row["completed_by"], row["source_id"]) == (None, None, None)
    assert shop.job_print_row(stays, "1")["status"] == "completed"
    assert shop.job_operations_json(stays) == {"print": True}
    # The audit keeps the first attribution and shows its withdrawal.
    (audit,) = shop.audit(moves)
    assert audit["source_id"] == source_id and audit["withdrawn_at"] is not None
    assert "withdrawn" in audit["notes"]


def test_r24_a_plan_made_before_a_newer_write_is_made_again(shop: Shop, instance) -> None:
    """Finding 2: a backfill planned before a newer window committed must not regress it."""
    job = job_with_ops(shop)
    shop.map_files(f"{job}-H", [file_of(job, "a")])
    shop.map_files(f"{job}-I", [file_of(job, "b")])
    _, marker = shop.print_event(f"{job}-H", "PRINTED")
    shop.process(instance)
    assert shop.job_print_row(job, "1")["status"] == "partial"

    settings = shop.definitions().resources["processing"].resolved()
    window = Window(PRINT_OS, marker - 1, marker)
    stale = plan_print(load_window_rows(shop.jm, window, settings), shop.jm, shop.logs, settings)
    shop.print_event(f"{job}-I", "PRINTED")
    shop.process(instance)  # the newer window lands first
    assert shop.job_print_row(job, "1")["status"] == "completed"

    report = write_plan(shop.jm, shop.logs, stale, "stale-backfill")
    assert report.replanned == 1
    assert shop.job_print_row(job, "1")["status"] == "completed"
    assert shop.job_operations_json(job) == {"print": True}
    state = shop.rows(shop.jm, "SELECT value FROM job_operation_state WHERE job_id = :j", j=job)
    assert state == [{"value": True}]


def test_r23_audit_verdict_does_not_depend_on_the_window(shop: Shop, instance) -> None:
    """Finding 3: a later-inserted scan with an older time loses, in one window or in two."""
    verdicts = []
    for split in (False, True):
        job = job_with_ops(shop, COATING)
        newer = shop.scan(f"{job}_1", {"coating": True}, at=T0 + timedelta(hours=2))
        if split:
            shop.process(instance, SCANNER)
        older = shop.scan(f"{job}_1", {"coating": True}, at=T0 + timedelta(hours=1))
        shop.process(instance, SCANNER)
        audit = {a["source_id"]: a for a in shop.audit(job)}
        verdicts.append((audit[newer]["applied"], audit[older]["applied"]))
        assert f"not applied: scanner #{newer}" in audit[older]["notes"]
        assert shop.job_op_row(job, "1", COATING)["source_id"] == newer
    assert verdicts == [(True, False), (True, False)]


def test_r23_a_late_earlier_scan_changes_the_verdict_of_later_ones(shop: Shop, instance) -> None:
    """One-at-a-time order is (marker, id): a scan committed late with a lower id and a newer
    time makes the scans after it in that order lose, as a from-scratch run says."""
    job = job_with_ops(shop, COATING)
    with shop.jm.begin() as conn:
        low = conn.execute(sa.text("SELECT nextval('scanned_codes_scan_id_seq')")).scalar_one()
    later = shop.scan(f"{job}_1", {"coating": True}, at=T0 + timedelta(hours=1))
    shop.process(instance, SCANNER)
    shop.execute(
        shop.jm,
        "INSERT INTO scanned_codes (scan_id, code_text, scanned_at, operations)"
        " VALUES (:id, :c, :t, '{\"coating\": true}')",
        {"id": low, "c": f"{job}_1", "t": T0 + timedelta(hours=3)},
    )
    shop.process(instance, SCANNER)
    audit = {a["source_id"]: a for a in shop.audit(job)}
    assert audit[low]["applied"] is True
    assert audit[later]["applied"] is False
    assert f"not applied: scanner #{low}" in audit[later]["notes"]
    assert shop.job_op_row(job, "1", COATING)["source_id"] == low


def _two_runlists(shop: Shop) -> tuple[str, str, str]:
    """Finding 4's shop: the scanned job has file _a on F (with a second job), _b on G (with a
    third); RL-A plans F, RL-B plans G."""
    scanned, on_f, on_g = (job_with_ops(shop, COATING) for _ in range(3))
    shop.map_files(f"{scanned}-F", [file_of(scanned, "a"), file_of(on_f)])
    shop.map_files(f"{scanned}-G", [file_of(scanned, "b"), file_of(on_g)])
    for name in (f"{scanned}-F", f"{scanned}-G"):
        shop.add_imposition_operation(name, COATING)
    shop.plan_runlist(f"RL-A-{scanned}", [f"{scanned}-F"])
    shop.plan_runlist(f"RL-B-{scanned}", [f"{scanned}-G"])
    return scanned, on_f, on_g


def test_r6_r22_reprocessing_a_job_scan_keeps_its_runlist(shop: Shop, instance) -> None:
    """Finding 4: a runlist printed after the scan does not re-attribute it on a backfill."""
    scanned, on_f, on_g = _two_runlists(shop)
    shop.print_event(f"{scanned}-F", "PRINTED", at=T0)
    shop.process(instance)
    scan_id = shop.scan(f"{scanned}_1", {"coating": True}, at=T0 + timedelta(hours=1))
    shop.process(instance, SCANNER)
    shop.print_event(f"{scanned}-G", "PRINTED", at=T0 + timedelta(hours=2))
    shop.process(instance)
    run_backfill(shop, instance, SCANNER, scan_id - 1, scan_id)
    assert shop.job_op_row(on_f, "1", COATING)["status"] == "completed"
    assert shop.job_op_row(on_g, "1", COATING)["status"] is None
    assert shop.job_operations_json(on_g) in ({}, {"print": True})
    assert "coating" not in (shop.job_operations_json(on_g) or {})


def test_r6_r22b_a_changed_runlist_choice_withdraws_the_old_attribution(
    shop: Shop, instance
) -> None:
    """A print row of G dated before the scan, committed after it was processed: the backfill
    chooses RL-B and withdraws what the scan gave RL-A's other job."""
    scanned, on_f, on_g = _two_runlists(shop)
    shop.print_event(f"{scanned}-F", "PRINTED", at=T0)
    shop.process(instance)
    scan_id = shop.scan(f"{scanned}_1", {"coating": True}, at=T0 + timedelta(hours=2))
    shop.process(instance, SCANNER)
    assert shop.job_op_row(on_f, "1", COATING)["status"] == "completed"
    shop.print_event(f"{scanned}-G", "PRINTED", at=T0 + timedelta(hours=1))
    shop.process(instance)
    run_backfill(shop, instance, SCANNER, scan_id - 1, scan_id)
    assert shop.job_op_row(on_g, "1", COATING)["status"] == "completed"
    assert shop.job_op_row(on_f, "1", COATING)["status"] is None
    assert "coating" not in (shop.job_operations_json(on_f) or {})
    assert shop.imposition_op_row(f"{scanned}-F", COATING)["status"] is None
    assert shop.imposition_op_row(f"{scanned}-G", COATING)["status"] == "completed"
    withdrawn = [a for a in shop.audit(on_f) if a["operation"] == "coating"]
    assert len(withdrawn) == 1 and withdrawn[0]["withdrawn_at"] is not None


def test_r14_a_missing_event_time_is_fixed_once_not_per_run(shop: Shop, instance) -> None:
    """Finding 5: a NULL job_complete_time falls back to created_at, then the first processing;
    a backfill never re-times it, and the job row cites the event that made its status."""
    job = job_with_ops(shop)
    shop.map_files(f"{job}-C", [file_of(job)])
    aborted, first = shop.print_event(f"{job}-C", "ABORTED")
    shop.execute(
        shop.jm,
        'UPDATE "print OS" SET job_complete_time = NULL, created_at = NULL WHERE id = :i',
        {"i": aborted},
    )
    shop.process(instance)
    printed, last = shop.print_event(f"{job}-C", "PRINTED", at=T0)
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["source_id"], row["completed_at"]) == ("completed", printed, T0)
    before = shop.state()
    run_backfill(shop, instance, PRINT_OS, first - 1, last)
    assert shop.state() == before
    first_processed = shop.scalar(
        shop.jm,
        "SELECT processed_at FROM processed_source_rows WHERE source_type = 'print_os'"
        " AND source_id = :i",
        i=aborted,
    )
    (audit,) = [a for a in shop.audit(job) if a["source_id"] == aborted]
    assert audit["event_time"] == first_processed


def test_r4_operation_rows_and_jobs_match_on_trimmed_identifiers(shop: Shop, instance) -> None:
    """The shop's own rows with padded identifiers are the same rows (R4), not missing (R16)."""
    job = shop.add_job(f"{shop.new_job_id()}")
    shop.execute(shop.jm, "UPDATE jobs SET job_id = job_id || ' ' WHERE job_id = :j", {"j": job})
    shop.execute(
        shop.logs,
        "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id)"
        " VALUES (:id, :j, '1 ', 'op001')",
        {"id": f"{job}:padded", "j": f"{job}\t"},
    )
    shop.execute(
        shop.logs,
        "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
        " operation_id) VALUES (:id, :i, 'op001\n')",
        {"id": f"{job}-P:padded", "i": f"{job}-P "},
    )
    shop.map_files(f"{job}-P", [file_of(job)], with_op_row=False)
    source_id, _ = shop.print_event(f"{job}-P", "PRINTED")
    shop.process(instance)
    row = shop.rows(
        shop.logs,
        "SELECT status, source_id FROM job_operations WHERE job_operation_id = :i",
        i=f"{job}:padded",
    )
    assert row == [{"status": "completed", "source_id": source_id}]
    row = shop.rows(
        shop.logs,
        "SELECT status FROM imposition_operations WHERE imposition_operation_id = :i",
        i=f"{job}-P:padded",
    )
    assert row == [{"status": "completed"}]
    assert shop.scalar(shop.jm, "SELECT operations FROM jobs WHERE job_id = :j", j=f"{job} ") == {
        "print": True
    }
    assert shop.failures(source_id) == []
