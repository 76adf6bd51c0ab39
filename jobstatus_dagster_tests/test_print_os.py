"""R9–R21 (docs/rules.md) on the print-OS path, against the embedded Postgres and a real Dagster instance."""

import threading
import time
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from jobstatus_dagster.pipeline.runner import execute_window
from jobstatus_dagster.pipeline.windows import PlannedRun
from jobstatus_dagster_tests.shop import T0, Shop


def files(job: str, version: str, *numbers: int) -> list[str]:
    return [f"FILE_{version}_Labex_{job}_{n}" for n in numbers]


def test_r11_job_completes_when_second_imposition_prints(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1, 2))
    shop.map_files(f"{job}-B", files(job, "1", 3))
    shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    assert shop.job_print_row(job, "1")["status"] == "partial"
    assert shop.job_print_row(job, "1")["notes"] == "2 of 3 files printed"
    assert shop.job_operations_json(job) == {"print": False}

    shop.print_event(f"{job}-B", "PRINTED")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("completed", "3 of 3 files printed")
    assert shop.job_operations_json(job) == {"print": True}
    counts = [(a["printed_count"], a["total_count"], a["status"]) for a in shop.audit(job)]
    assert counts == [(2, 3, "partial"), (3, 3, "completed")]


@pytest.mark.parametrize("spelling", ["{}\n", " {}\r\n", "{}\t"])
def test_r4_file_id_with_surrounding_whitespace_counts_like_any_other(
    shop: Shop, instance, spelling: str
) -> None:
    """R4: a mapped file id differing only by surrounding whitespace is the same file id in the
    Python parser and in the SQL lookup of a job's files, so the job has two files, not one."""
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", [spelling.format(f"FILE_1_Labex_{job}")])
    shop.map_files(f"{job}-B", files(job, "1", 2))
    first, _ = shop.print_event(f"{job}-B", "PRINTED")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("partial", "1 of 2 files printed")

    second, _ = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("completed", "2 of 2 files printed")
    assert shop.job_operations_json(job) == {"print": True}
    assert shop.failures(first) == [] and shop.failures(second) == []


@pytest.mark.parametrize(
    ("printed_as", "mapped_as"),
    [("{}-J ", "{}-J"), ("{}-J", "{}-J\t"), (" {}-J\r\n", "{}-J \n")],
)
def test_r4_imposition_name_with_surrounding_whitespace_is_one_imposition(
    shop: Shop, instance, printed_as: str, mapped_as: str
) -> None:
    """R4: "print OS".name 'IMP-J ' and mapping 'IMP-J\t' are imposition IMP-J for the event,
    the mapping lookup and the history lookup alike, so the job completes when its second
    imposition prints in a later run (R11), instead of staying partial."""
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    name = f"{job}-J"
    shop.map_files(mapped_as.format(job), files(job, "1", 1), with_op_row=False)
    shop.add_imposition_operation(name)
    shop.map_files(f"{job}-K", files(job, "1", 2))
    first, _ = shop.print_event(printed_as.format(job), "PRINTED")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("partial", "1 of 2 files printed")

    second, _ = shop.print_event(f"{job}-K", "PRINTED")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("completed", "2 of 2 files printed")
    assert shop.job_operations_json(job) == {"print": True}
    assert shop.imposition_print_row(name)["status"] == "completed"
    assert shop.failures(first) == [] and shop.failures(second) == []


def test_r9_r10_reprinted_file_counts_once_and_printed_beats_aborted(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1, 2))
    shop.map_files(f"{job}-R", files(job, "1", 2))  # reprint of file 2
    shop.print_event(f"{job}-A", "ABORTED")
    shop.process(instance)
    assert shop.job_print_row(job, "1")["notes"] == "0 of 2 files printed, 2 aborted"
    assert shop.job_print_row(job, "1")["status"] == "aborted"

    shop.print_event(f"{job}-R", "PRINTED")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("partial", "1 of 2 files printed, 1 aborted")


def test_r10_status_compared_case_insensitively(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1))
    shop.map_files(f"{job}-B", files(job, "1", 2))
    shop.print_event(f"{job}-A", "printed")
    shop.print_event(f"{job}-B", " Aborted ")
    shop.process(instance)
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("partial", "1 of 2 files printed, 1 aborted")
    assert shop.imposition_print_row(f"{job}-B")["status"] == "aborted"
    assert shop.failures(reason="unknown_status") == [] or all(
        f["subject"] not in ("printed", " Aborted ") for f in shop.failures(reason="unknown_status")
    )


def test_r12_print_true_only_when_highest_version_completed(shop: Shop, instance) -> None:
    job = shop.add_job()
    for version in ("2", "10"):
        shop.add_job_operation(job, version)
    shop.map_files(f"{job}-V2", files(job, "2", 1))
    shop.map_files(f"{job}-V10", files(job, "10", 1))
    shop.print_event(f"{job}-V2", "PRINTED")
    shop.process(instance)
    # Version 2 is complete but 10 (numerically highest, textually lower) is not printed yet.
    assert shop.job_print_row(job, "2")["status"] == "completed"
    assert shop.job_operations_json(job) == {"print": False}
    state = shop.rows(shop.jm, "SELECT * FROM job_operation_state WHERE job_id = :j", j=job)[0]
    assert state["version_tag"] == "10" and "not printed yet" in state["notes"]

    shop.print_event(f"{job}-V10", "PRINTED")
    shop.process(instance)
    assert shop.job_operations_json(job) == {"print": True}


def test_r13_imposition_row_takes_latest_event_status(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.map_files(f"{job}-A", files(job, "1", 1))
    shop.print_event(f"{job}-A", "ABORTED")
    shop.process(instance)
    assert shop.imposition_print_row(f"{job}-A")["status"] == "aborted"
    source_id, _ = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    row = shop.imposition_print_row(f"{job}-A")
    assert (row["status"], row["source_id"], row["completed_by"]) == (
        "completed",
        source_id,
        "print_os",
    )


def test_r14_event_time_source_and_processing_time_fallback(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1))
    shop.map_files(f"{job}-B", files(job, "1", 2))
    at = datetime(2026, 10, 3, 14, 15, 16)
    source_a, _ = shop.print_event(f"{job}-A", "PRINTED", at=at)
    shop.process(instance)
    row = shop.imposition_print_row(f"{job}-A")
    assert (row["completed_at"], row["completed_by"], row["source_id"]) == (
        at,
        "print_os",
        source_a,
    )

    before = datetime.now().replace(microsecond=0) - timedelta(hours=14)  # naive UTC vs local
    source_b, _ = shop.print_event(f"{job}-B", "PRINTED")
    shop.execute(
        shop.jm, 'UPDATE "print OS" SET job_complete_time = NULL WHERE id = :i', {"i": source_b}
    )
    shop.process(instance)
    row = shop.imposition_print_row(f"{job}-B")
    assert row["completed_at"] > before + timedelta(hours=1)  # the processing time, not NULL
    audit = {a["source_id"]: a for a in shop.audit(job)}
    assert audit[source_a]["event_time"] == at
    assert audit[source_b]["processed_at"] >= audit[source_a]["processed_at"]


def test_r15_late_older_event_never_overwrites_newer_imposition_state(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.map_files(f"{job}-A", files(job, "1", 1))
    newer, _ = shop.print_event(f"{job}-A", "PRINTED", at=T0 + timedelta(days=2))
    shop.process(instance)
    # A row arriving later (higher marker) that describes an older abort.
    older, _ = shop.print_event(f"{job}-A", "ABORTED", at=T0 + timedelta(days=1))
    shop.process(instance)
    row = shop.imposition_print_row(f"{job}-A")
    assert (row["status"], row["source_id"]) == ("completed", newer)
    # Both events are audited (R15, R17); the job's state counts the printed file.
    assert {a["source_id"] for a in shop.audit(job)} == {newer, older}
    assert shop.job_operations_json(job) == {"print": True}


def test_r16_missing_rows_not_invented_and_missing_job_recorded(shop: Shop, instance) -> None:
    job = shop.add_job()  # no job_operations row for it
    ghost = shop.add_job(in_jobs=False)
    shop.add_job_operation(ghost, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1) + files(ghost, "1", 1), with_op_row=False)
    source_id, _ = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)

    assert shop.job_print_row(job, "1") is None
    assert shop.imposition_print_row(f"{job}-A") is None
    assert (
        shop.scalar(shop.logs, "SELECT count(*) FROM job_operations WHERE job_id = :j", j=job) == 0
    )
    reasons = {(f["reason"], f["subject"]) for f in shop.failures(source_id)}
    assert ("missing_operation_row", f"{job}/1/print") in reasons
    assert ("missing_operation_row", f"{job}-A/print") in reasons
    assert ("missing_job", ghost) in reasons
    assert shop.failures(source_id, "missing_job")[0]["retryable"] is True
    # jobs.operations and the audit are still written for the job that exists...
    assert shop.job_operations_json(job) == {"print": True}
    assert len(shop.audit(job)) == 1
    # ...and the ghost job's own rows are written where they exist.
    assert shop.job_print_row(ghost, "1")["status"] == "completed"
    assert len(shop.audit(ghost)) == 1


def test_r17_reprocessing_a_window_adds_no_rows_and_changes_nothing(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1, 2))
    _, first = shop.print_event(f"{job}-A", "ABORTED")
    _, last = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    before = shop.snapshot()
    job_def = shop.definitions().resolve_job_def("process_print_os")
    run = execute_window(job_def, instance, PlannedRun("print_os", first - 1, last, "test"), "test")
    assert run.success, run.error
    assert run.summary["audit_rows_written"] == 0
    assert shop.snapshot() == before


def test_second_process_changes_nothing(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1))
    shop.print_event(f"{job}-A", "PRINTED")
    shop.print_event("never-mapped", "PRINTED")
    shop.process(instance)
    before = shop.snapshot()
    outcome = shop.process(instance)
    assert outcome.runs == []  # nothing new, retries not yet due
    assert shop.snapshot() == before


def test_r20_bad_rows_recorded_and_batch_continues(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", [*files(job, "1", 1), "FILE_1_Other_12_34_5", "garbage.pdf"])
    good, _ = shop.print_event(f"{job}-A", "PRINTED")
    unmapped, _ = shop.print_event(f"{job}-nowhere", "PRINTED")
    paused, _ = shop.print_event(f"{job}-A", "PAUSED")
    nameless, _ = shop.print_event(None, "PRINTED")
    shop.process(instance)

    assert shop.job_print_row(job, "1")["status"] == "completed"
    bad_files = {f["subject"] for f in shop.failures(good, "bad_file_id")}
    assert bad_files == {"garbage.pdf"}  # another customer's id is not malformed (R20)
    assert [f["subject"] for f in shop.failures(0, "foreign_file")] == ["FILE_1_Other_12_34_5"]
    assert shop.failures(unmapped, "unmapped_imposition")[0]["retryable"] is True
    assert shop.failures(paused, "unknown_status")[0]["subject"] == "PAUSED"
    assert shop.failures(nameless, "missing_imposition_id")[0]["retryable"] is False
    processed = shop.scalar(
        shop.jm,
        "SELECT count(*) FROM processed_source_rows WHERE source_id = ANY(:ids)",
        ids=[good, unmapped, paused, nameless],
    )
    assert processed == 4


def test_r20_retryable_failure_resolves_when_mapping_arrives(urls, instance) -> None:
    with Shop(urls, retry_interval_seconds=0) as shop:
        job = shop.add_job()
        shop.add_job_operation(job, "1")
        source_id, _ = shop.print_event(f"{job}-late", "PRINTED")
        shop.process(instance)
        failure = shop.failures(source_id, "unmapped_imposition")[0]
        assert failure["resolved_at"] is None and failure["retryable"]
        attempts = failure["attempts"]

        shop.map_files(f"{job}-late", files(job, "1", 1))
        shop.process(instance)
        failure = shop.failures(source_id, "unmapped_imposition")[0]
        assert failure["resolved_at"] is not None  # recorded, not deleted
        assert failure["attempts"] == attempts
        assert shop.job_print_row(job, "1")["status"] == "completed"
        assert shop.job_operations_json(job) == {"print": True}


def test_r20_retries_stop_at_the_limit(urls, instance) -> None:
    with Shop(urls, retry_interval_seconds=0, retry_limit=3) as shop:
        source_id, _ = shop.print_event("never-mapped-either", "PRINTED")
        for _ in range(5):
            shop.process(instance)
        failure = shop.failures(source_id, "unmapped_imposition")[0]
        assert failure["attempts"] == 3 and failure["resolved_at"] is None


def test_r19_row_committed_out_of_order_is_still_processed(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-slow", files(job, "1", 1))
    shop.map_files(f"{job}-fast", files(job, "1", 2))
    marker_slow = shop.marker() + 1000
    with shop.jm.connect() as slow:
        tx = slow.begin()
        slow.execute(
            sa.text(
                'INSERT INTO "print OS" (name, status, marker, job_complete_time)'
                " VALUES (:n, 'PRINTED', :m, :t)"
            ),
            {"n": f"{job}-slow", "m": marker_slow, "t": T0},
        )
        shop.print_event(f"{job}-fast", "PRINTED", marker=marker_slow + 1)
        shop.process(instance)
        assert shop.marker() == marker_slow + 1
        assert shop.job_print_row(job, "1")["notes"] == "1 of 2 files printed"
        tx.commit()
    shop.process(instance)
    assert shop.imposition_print_row(f"{job}-slow")["status"] == "completed"
    assert shop.job_print_row(job, "1")["status"] == "completed"
    assert len(shop.audit(job)) == 2


def test_r19_second_writer_waits_for_the_marker_lock(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.map_files(f"{job}-A", files(job, "1", 1))
    shop.print_event(f"{job}-A", "PRINTED")
    done = threading.Event()
    with shop.jm.connect() as holder:
        tx = holder.begin()
        holder.execute(
            sa.text("SELECT 1 FROM processing_markers WHERE marker_type = 'print_os' FOR UPDATE")
        )
        worker = threading.Thread(target=lambda: (shop.process(instance), done.set()))
        worker.start()
        time.sleep(3)
        assert not done.is_set()  # blocked on the lock, not interleaving
        tx.rollback()
    worker.join(60)
    assert done.is_set()
    assert shop.imposition_print_row(f"{job}-A")["status"] == "completed"


def test_r21_backfill_never_moves_the_marker_backwards(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1, 2))
    _, first = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    marker = shop.marker()
    # The mapping was wrong: file 2 really belongs to another imposition that is not printed.
    shop.execute(
        shop.logs,
        "UPDATE imposition_file_mapping SET imposition_id = :b WHERE file_id = :f",
        {"b": f"{job}-B", "f": files(job, "1", 2)[0]},
    )
    job_def = shop.definitions().resolve_job_def("process_print_os")
    run = execute_window(
        job_def, instance, PlannedRun("print_os", first - 1, first, "t"), "backfill"
    )
    assert run.success, run.error
    assert shop.marker() == marker
    assert shop.job_print_row(job, "1")["notes"] == "1 of 2 files printed"
    assert shop.job_operations_json(job) == {"print": False}
    # R17/R21: the event's audit row is refreshed to the corrected counts, not added to.
    assert [(a["printed_count"], a["total_count"]) for a in shop.audit(job)] == [(1, 2)]


def test_r20_huge_and_hostile_values_are_recorded_not_crashed(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-H", [*files(job, "1", 1), "FILE_1_Labex_" + "9" * 40 + "_1_2"])
    huge, _ = shop.print_event("x'; DROP TABLE jobs;--" + "é" * 10_000, "PRINTED")
    good, _ = shop.print_event(f"{job}-H", "PRINTED")
    shop.process(instance)
    (failure,) = shop.failures(huge, "unmapped_imposition")
    assert len(failure["subject"]) == 200 and failure["retryable"]
    assert shop.failures(good, "bad_file_id")[0]["subject"].startswith("FILE_1_Labex_999")
    assert shop.job_print_row(job, "1")["status"] == "completed"
    assert shop.scalar(shop.jm, "SELECT count(*) FROM jobs") > 0


def test_r9_files_of_jobs_probe_the_index_whatever_share_of_the_mapping(shop: Shop) -> None:
    """R9's lookup of every file of a window's jobs goes through the expression index even when
    those jobs hold most of the mapping: a full scan runs the file-id regex on every row of the
    shop (bench/README.md). The planner hint ends with the lookup."""
    from jobstatus_dagster.io.sources import load_files_of_jobs

    jobs = [shop.add_job() for _ in range(40)]
    for job in jobs:
        shop.map_files(f"{job}-A", files(job, "1", 1, 2, 3), with_op_row=False)
    shop.execute(shop.logs, "ANALYZE imposition_file_mapping")
    with shop.logs.connect() as conn:
        found = load_files_of_jobs(conn, jobs)
        scans = conn.execute(
            sa.text(
                "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
                " WHERE relname = 'imposition_file_mapping'"
            )
        ).one()
        seqscan_after = conn.execute(sa.text("SHOW enable_seqscan")).scalar()
    assert len(found) == 3 * len(jobs)
    assert set(found["file_id"]) == {f for job in jobs for f in files(job, "1", 1, 2, 3)}
    assert (scans.seq_scan, scans.idx_scan > 0) == (0, True)
    assert seqscan_after == "on"


def test_r20_foreign_file_is_recorded_once_per_file_id_not_per_event(shop: Shop, instance) -> None:
    """R20: FILE_1_Acme_… is well-formed but not ours: not a bad_file_id per event, one
    foreign_file row for the file id, however many events, windows and re-runs meet it; and it
    is not one of the job's files (R9)."""
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    foreign = f"FILE_1_Acme_{job}"
    shop.map_files(f"{job}-A", [*files(job, "1", 1), foreign])
    shop.map_files(f"{job}-B", [*files(job, "1", 2), f"{foreign}\n"])
    first, marker = shop.print_event(f"{job}-A", "PRINTED")
    again, _ = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    last, _ = shop.print_event(f"{job}-B", "PRINTED")
    shop.process(instance)
    job_def = shop.definitions().resolve_job_def("process_print_os")
    rerun = execute_window(job_def, instance, PlannedRun("print_os", marker - 1, marker, "t"), "t")
    assert rerun.success, rerun.error

    recorded = [f for f in shop.failures(reason="foreign_file") if f["subject"] == foreign]
    assert [
        (f["source_type"], f["source_id"], f["retryable"], f["attempts"], f["resolved_at"])
        for f in recorded
    ] == [("imposition_file_mapping", 0, False, 1, None)]
    assert all(shop.failures(event) == [] for event in (first, again, last))
    row = shop.job_print_row(job, "1")
    assert (row["status"], row["notes"]) == ("completed", "2 of 2 files printed")
