"""R20 (one bad row never stops a source) and R1 (our indexes never refuse the shop's writes),
issue 18 findings 3 and 4: identifiers longer than a btree allows, and jobs.operations values
that are not JSON objects, against the embedded Postgres and a real Dagster instance."""

import hashlib
import json

import pytest
import sqlalchemy as sa

from jobstatus_dagster.core.identifiers import MAX_KEY_BYTES, SUBJECT_CHARS
from jobstatus_dagster.pipeline.runner import execute_window
from jobstatus_dagster.pipeline.windows import PlannedRun
from jobstatus_dagster_tests.shop import T0, Shop

PRINT_OP, COATING_OP = "op001", "op003"


def long_id(prefix: str, length: int = 4000) -> str:
    """An identifier of ``length`` characters that does not compress (hex of a hash chain):
    Postgres compresses a repetitive key and would then fit it into a btree row."""
    text, block = prefix, prefix.encode()
    while len(text) < length:
        block = hashlib.sha256(block).digest()
        text += block.hex()
    return text[:length]


def files(job: str, version: str, *numbers: int) -> list[str]:
    return [f"FILE_{version}_Labex_{job}_{n}" for n in numbers]


def failures_of(shop: Shop, source: str, source_id: int, reason: str | None = None) -> list[dict]:
    """Failures of one source row (both sources number their rows from 1: the type decides)."""
    return [f for f in shop.failures(source_id, reason) if f["source_type"] == source]


def scan_failures(shop: Shop, scan_id: int, reason: str) -> list[dict]:
    return failures_of(shop, "scanner", scan_id, reason)


def rerun_changes_nothing(shop: Shop, instance, source: str, first: int, last: int) -> None:
    """R17/R23: the same window again writes nothing."""
    before = shop.snapshot()
    job = shop.definitions().resolve_job_def(f"process_{source}")
    run = execute_window(job, instance, PlannedRun(source, first - 1, last, "test"), "test")
    assert run.success, run.error
    assert run.summary["audit_rows_written"] == 0
    assert shop.snapshot() == before


def test_r20_a_long_imposition_id_never_stops_the_print_source(shop: Shop, instance) -> None:
    """An imposition mapped and printed under a 4,000-character id, next to a good event: the
    good event applies everywhere, the long one's job-level effect applies too, its imposition
    attribution is recorded as identifier_too_long, the marker moves past both, and the same
    window again changes nothing."""
    bad_job, good_job = shop.add_job(), shop.add_job()
    shop.add_job_operation(bad_job, "1")
    shop.add_job_operation(good_job, "1")
    long_imp = long_id(f"{bad_job}-L")
    shop.map_files(long_imp, files(bad_job, "1", 1), with_op_row=False)
    shop.map_files(f"{good_job}-G", files(good_job, "1", 1))
    bad, first = shop.print_event(long_imp, "PRINTED")
    good, last = shop.print_event(f"{good_job}-G", "PRINTED")
    shop.process(instance)

    assert shop.marker() == last
    assert shop.job_print_row(good_job, "1")["status"] == "completed"
    assert shop.imposition_print_row(f"{good_job}-G")["status"] == "completed"
    assert shop.job_operations_json(good_job) == {"print": True}
    assert [(a["source_id"], a["status"]) for a in shop.audit(good_job)] == [(good, "completed")]
    # The job-level effect of the long imposition's event: its key is fine.
    assert shop.job_print_row(bad_job, "1")["status"] == "completed"
    assert shop.job_operations_json(bad_job) == {"print": True}
    assert [(a["source_id"], a["status"]) for a in shop.audit(bad_job)] == [(bad, "completed")]
    (failure,) = failures_of(shop, "print_os", bad, "identifier_too_long")
    assert not failure["retryable"] and len(failure["subject"]) <= SUBJECT_CHARS
    assert failure["subject"].startswith(long_imp[:100])
    assert "imposition_id of 4000 bytes" in failure["detail"]
    assert failures_of(shop, "print_os", good) == []
    rerun_changes_nothing(shop, instance, "print_os", first, last)


def test_r20_r1_a_long_imposition_with_an_operation_row_of_the_shop(shop: Shop, instance) -> None:
    """The shop's own imposition_operations row for a 4,000-character imposition is accepted
    (R1) and left as the shop holds it (R20: we cannot index its attribution), while the event's
    job-level effect applies."""
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    long_imp = long_id(f"{job}-R")
    shop.map_files(long_imp, files(job, "1", 1), with_op_row=False)
    # The shop's own row (its primary key, a btree of the shop's, is a short id).
    shop.execute(
        shop.logs,
        "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
        " operation_id, sequence_order, required) VALUES (:id, :i, 'op001', 1, true)",
        {"id": f"{job}-R:op001", "i": long_imp},
    )
    bad, marker = shop.print_event(long_imp, "ABORTED")
    shop.process(instance)
    assert shop.marker() >= marker
    assert shop.imposition_print_row(long_imp) == {
        "status": None,
        "completed_at": None,
        "completed_by": None,
        "source_id": None,
        "notes": None,
    }
    assert shop.job_print_row(job, "1")["status"] == "aborted"
    assert [f["reason"] for f in failures_of(shop, "print_os", bad)] == ["identifier_too_long"]
    rerun_changes_nothing(shop, instance, "print_os", marker, marker)


def test_r20_a_runlist_holding_a_long_imposition_never_stops_the_scanner(
    shop: Shop, instance
) -> None:
    """A runlist scan (R5) and a job scan widened to the runlist (R6), the runlist holding a
    4,000-character imposition beside a good one: both scans apply to every job version and to
    the good imposition; the long one is recorded per scan; the scanner's marker moves on."""
    job_a, job_b = shop.add_job(), shop.add_job()
    for job in (job_a, job_b):
        shop.add_job_operation(job, "1", COATING_OP)
    long_imp, good_imp = long_id(f"{job_a}-RL"), f"{job_b}-RG"
    shop.map_files(long_imp, files(job_a, "1", 1), with_op_row=False)
    shop.map_files(good_imp, files(job_b, "1", 1), with_op_row=False)
    shop.add_imposition_operation(good_imp, COATING_OP)
    runlist = f"RL-{job_a}"
    shop.plan_runlist(runlist, [long_imp, good_imp])
    by_runlist = shop.scan(runlist, {"coating": True}, at=T0)
    by_job = shop.scan(f"{job_a}_1", ["coating"], at=T0)
    shop.process(instance, "scanner")

    assert shop.marker("scanned_codes") == by_job
    for job in (job_a, job_b):
        assert shop.job_op_row(job, "1", COATING_OP)["status"] == "completed"
        assert shop.job_operations_json(job) == {"coating": True}
        audited = {(a["source_id"], a["operation"]) for a in shop.audit(job)}
        assert audited == {(by_runlist, "coating"), (by_job, "coating")}
    assert shop.imposition_op_row(good_imp, COATING_OP)["status"] == "completed"
    for scan in (by_runlist, by_job):
        (failure,) = scan_failures(shop, scan, "identifier_too_long")
        assert failure["subject"].startswith(long_imp[:100]) and not failure["retryable"]
    rerun_changes_nothing(shop, instance, "scanner", by_runlist, by_job)


def test_r20_an_operation_name_too_long_for_a_key_is_recorded(shop: Shop, instance) -> None:
    """An operation name the shop put into operation_codes that is longer than a key of ours
    may hold: the scan's other operations apply, the long one is recorded."""
    name = "x" + long_id("op", MAX_KEY_BYTES + 200)
    shop.execute(
        shop.logs,
        "INSERT INTO operation_codes (operation, operation_id) VALUES (:n, 'op777')",
        {"n": name},
    )
    job = shop.add_job()
    shop.add_job_operation(job, "1", COATING_OP)
    scan = shop.scan(f"{job}_1", {"coating": True, name: True})
    shop.process(instance, "scanner")
    assert shop.marker("scanned_codes") == scan
    assert shop.job_op_row(job, "1", COATING_OP)["status"] == "completed"
    assert shop.job_operations_json(job) == {"coating": True}
    (failure,) = scan_failures(shop, scan, "identifier_too_long")
    assert failure["subject"].startswith(name[:100])
    shop.execute(shop.logs, "DELETE FROM operation_codes WHERE operation = :n", {"n": name})


@pytest.mark.parametrize(
    ("held", "kind"),
    [("null", "null"), ('"done"', "string"), ("7", "number"), ('["print"]', "array")],
)
def test_r20_jobs_operations_that_is_not_an_object_is_left_and_recorded(
    urls, instance, held: str, kind: str
) -> None:
    """A jobs.operations value the shop holds as JSON null, a string, a number or an array is
    left exactly as it is (never corrupted), recorded against the row that would write it
    (retryable), and the rest of the window applies; once the shop makes it an object, the
    retry writes it."""
    with Shop(urls, retry_interval_seconds=0) as shop:
        odd, fine = shop.add_job(), shop.add_job()
        for job in (odd, fine):
            shop.add_job_operation(job, "1")
            shop.map_files(f"{job}-A", files(job, "1", 1))
        shop.execute(
            shop.jm,
            "UPDATE jobs SET operations = CAST(:v AS jsonb) WHERE job_id = :j",
            {"v": held, "j": odd},
        )
        odd_event, _ = shop.print_event(f"{odd}-A", "PRINTED")
        fine_event, last = shop.print_event(f"{fine}-A", "PRINTED")
        shop.process(instance)

        assert shop.marker() == last
        assert shop.scalar(
            shop.jm, "SELECT operations::text FROM jobs WHERE job_id = :j", j=odd
        ) == json.dumps(json.loads(held))
        assert shop.job_operations_json(fine) == {"print": True}
        assert shop.job_print_row(odd, "1")["status"] == "completed"  # logs still written
        assert [a["source_id"] for a in shop.audit(odd)] == [odd_event]
        (failure,) = failures_of(shop, "print_os", odd_event, "operations_not_object")
        assert failure["retryable"] and failure["subject"] == odd
        assert f"is a JSON {kind}, not an object" in failure["detail"]
        assert failures_of(shop, "print_os", fine_event) == []

        shop.execute(
            shop.jm, "UPDATE jobs SET operations = '{}'::jsonb WHERE job_id = :j", {"j": odd}
        )
        shop.process(instance)  # the retry
        assert shop.job_operations_json(odd) == {"print": True}
        (failure,) = failures_of(shop, "print_os", odd_event, "operations_not_object")
        assert failure["resolved_at"] is not None


def test_r20_sql_null_operations_is_the_empty_object(shop: Shop, instance) -> None:
    job = shop.add_job()
    shop.add_job_operation(job, "1")
    shop.map_files(f"{job}-A", files(job, "1", 1))
    shop.execute(shop.jm, "UPDATE jobs SET operations = NULL WHERE job_id = :j", {"j": job})
    event, _ = shop.print_event(f"{job}-A", "PRINTED")
    shop.process(instance)
    assert shop.job_operations_json(job) == {"print": True}
    assert failures_of(shop, "print_os", event) == []


def test_r1_the_shop_inserts_a_4000_character_id_into_its_operation_tables(
    shop: Shop,
) -> None:
    """R1: after our migrations the shop's own INSERTs of a 4,000-character identifier into
    each of its tables we index are accepted."""
    long = long_id("shop-insert")
    with shop.logs.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id)"
                " VALUES ('long-1', :v, :v, :v)"
            ),
            {"v": long},
        )
        conn.execute(
            sa.text(
                "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
                " operation_id) VALUES ('long-2', :v, :v)"
            ),
            {"v": long},
        )
        conn.execute(
            sa.text("INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES (:v, :v)"),
            {"v": long},
        )
        conn.execute(
            sa.text(
                "INSERT INTO production_planner_paths (runlist_id, imposition_id, path)"
                " VALUES (:v, :v, :v)"
            ),
            {"v": long},
        )
    with shop.jm.begin() as conn:
        conn.execute(
            sa.text(
                'INSERT INTO "print OS" (name, status, job_name, item_id) VALUES (:v, :v, :v, :v)'
            ),
            {"v": long},
        )
        conn.execute(
            sa.text("INSERT INTO scanned_codes (code_text, machine_id) VALUES (:v, :v)"),
            {"v": long},
        )
