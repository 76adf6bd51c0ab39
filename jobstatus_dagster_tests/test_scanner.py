"""R5–R8, R14–R17, R20 (docs/rules.md) on the scanner path, against the embedded Postgres."""

from datetime import timedelta

import pytest

from jobstatus_dagster_tests.shop import T0, Shop

OPS = ("op001", "op003", "op006")


def planned_job(shop: Shop, *, version: str = "1", in_jobs: bool = True) -> str:
    job = shop.add_job(in_jobs=in_jobs)
    for op in OPS:
        shop.add_job_operation(job, version, op)
    return job


def imposition(shop: Shop, name: str, *jobs: str, version: str = "1") -> str:
    shop.map_files(name, [f"FILE_{version}_Labex_{job}_1" for job in jobs], with_op_row=False)
    for op in OPS:
        shop.add_imposition_operation(name, op)
    return name


def run_scanner(shop: Shop, instance) -> None:
    shop.process(instance, "scanner")


def test_r5_runlist_scan_updates_every_job_and_imposition_of_the_runlist(
    shop: Shop, instance
) -> None:
    a, b, c = (planned_job(shop) for _ in range(3))
    i1 = imposition(shop, f"{a}-I1", a, b)
    i2 = imposition(shop, f"{a}-I2", c)
    shop.plan_runlist(f"RL-{a}", [i1, i2])
    scan_id = shop.scan(f"  RL-{a}\t", {"coating": True, "kiss_cut": False}, machine="coater-1")
    run_scanner(shop, instance)
    for job in (a, b, c):
        row = shop.job_op_row(job, "1", "op003")
        assert (row["status"], row["completed_by"], row["source_id"]) == (
            "completed",
            "scanner",
            scan_id,
        )
        assert shop.job_op_row(job, "1", "op006")["status"] is None  # false does not count (R7)
        assert shop.job_operations_json(job) == {"coating": True}
        assert [(r["operation"], r["source_type"]) for r in shop.audit(job)] == [
            ("coating", "scanner")
        ]
    for name in (i1, i2):
        assert shop.imposition_op_row(name, "op003")["status"] == "completed"


def test_r4_runlist_and_imposition_ids_compare_trimmed(shop: Shop, instance) -> None:
    """R4: planner rows 'RL-x\n' / ' I\t' are runlist RL-x and imposition I for the scan."""
    job = planned_job(shop)
    name = imposition(shop, f"{job}-T", job)
    shop.plan_runlist(f"RL-{job}-T\n", [f" {name}\t"])
    scan_id = shop.scan(f"RL-{job}-T", ["coating"])
    run_scanner(shop, instance)
    assert shop.job_op_row(job, "1", "op003")["status"] == "completed"
    assert shop.imposition_op_row(name, "op003")["status"] == "completed"
    assert shop.failures(scan_id) == []


def test_r6_job_scan_widens_to_its_runlist(shop: Shop, instance) -> None:
    a, b = planned_job(shop), planned_job(shop)
    shop.plan_runlist(f"RL-{a}", [imposition(shop, f"{a}-I1", a), imposition(shop, f"{a}-I2", b)])
    shop.scan(f"{a}_1", ["kiss_cut"])
    run_scanner(shop, instance)
    assert shop.job_op_row(b, "1", "op006")["status"] == "completed"
    assert "via runlist RL-" in shop.job_op_row(b, "1", "op006")["notes"]
    assert shop.imposition_op_row(f"{a}-I2", "op006")["status"] == "completed"


def test_r6_job_in_two_runlists_uses_the_one_printed_last_and_says_so(shop: Shop, instance) -> None:
    a, b, c = planned_job(shop), planned_job(shop), planned_job(shop)
    shared = imposition(shop, f"{a}-S", a)
    early, late = imposition(shop, f"{a}-E", b), imposition(shop, f"{a}-L", c)
    shop.plan_runlist(f"RL-{a}-Z", [shared, early])  # greatest id, but printed earlier
    shop.plan_runlist(f"RL-{a}-A", [shared, late])
    # R6: only print rows at or before the scan's time count.
    shop.print_event(early, "PRINTED", marker=shop.marker() + 500_000, at=T0)
    shop.print_event(late, "PRINTED", marker=shop.marker() + 500_001, at=T0)
    shop.scan(f"{a}_1", ["coating"], at=T0 + timedelta(hours=1))
    run_scanner(shop, instance)
    assert shop.job_op_row(c, "1", "op003")["status"] == "completed"
    assert shop.job_op_row(b, "1", "op003")["status"] is None
    note = shop.job_op_row(a, "1", "op003")["notes"]
    assert f"chose RL-{a}-A" in note and f"RL-{a}-Z" in note


def test_r6_r14_a_print_row_without_job_complete_time_counts_at_its_created_at(
    shop: Shop, instance
) -> None:
    """R6 dates a print row by R14's event time: job_complete_time, else created_at. Both rows
    here lack job_complete_time; the one created before the scan counts, the one created after
    it (with the higher marker, in the greater runlist) does not."""
    a, b, c = planned_job(shop), planned_job(shop), planned_job(shop)
    shared = imposition(shop, f"{a}-S", a)
    before, after = imposition(shop, f"{a}-B", b), imposition(shop, f"{a}-F", c)
    shop.plan_runlist(f"RL-{a}-1", [shared, before])
    shop.plan_runlist(f"RL-{a}-2", [shared, after])
    scanned_at = T0 + timedelta(hours=1)
    early, _ = shop.print_event(before, "PRINTED", marker=shop.marker() + 600_000)
    late, _ = shop.print_event(after, "PRINTED", marker=shop.marker() + 600_001)
    shop.execute(
        shop.jm,
        'UPDATE "print OS" SET job_complete_time = NULL, created_at = :t WHERE id = :i',
        [
            {"t": scanned_at - timedelta(minutes=30), "i": early},
            {"t": scanned_at + timedelta(minutes=30), "i": late},
        ],
    )
    shop.scan(f"{a}_1", ["coating"], at=scanned_at)
    run_scanner(shop, instance)
    assert shop.job_op_row(b, "1", "op003")["status"] == "completed"
    assert shop.job_op_row(c, "1", "op003")["status"] is None
    note = shop.job_op_row(a, "1", "op003")["notes"]
    assert f"chose RL-{a}-1 (highest print marker" in note, note


def test_r6_tie_on_print_marker_goes_to_the_greatest_runlist_id(shop: Shop, instance) -> None:
    a, b, c = planned_job(shop), planned_job(shop), planned_job(shop)
    shared = imposition(shop, f"{a}-S", a)
    shop.plan_runlist(f"RL-{a}-1", [shared, imposition(shop, f"{a}-X", b)])
    shop.plan_runlist(f"RL-{a}-2", [shared, imposition(shop, f"{a}-Y", c)])
    shop.scan(f"{a}_1", ["coating"])  # nothing printed: both tie
    run_scanner(shop, instance)
    assert shop.job_op_row(c, "1", "op003")["status"] == "completed"
    assert shop.job_op_row(b, "1", "op003")["status"] is None


def test_r6_job_in_no_runlist_updates_that_job_alone(shop: Shop, instance) -> None:
    a, b = planned_job(shop), planned_job(shop)
    imposition(shop, f"{a}-I", a, b)  # shares an imposition, but no runlist
    shop.scan(f"{a}_1", ["coating"])
    run_scanner(shop, instance)
    assert shop.job_op_row(a, "1", "op003")["status"] == "completed"
    assert shop.job_op_row(b, "1", "op003")["status"] is None
    assert shop.imposition_op_row(f"{a}-I", "op003")["status"] is None


@pytest.mark.parametrize(
    "operations",
    [
        {"coating": True, "kiss_cut": False},
        ["coating"],
        [{"operation": "coating"}],
        [{"name": "Coating"}],
        {"operations": ["coating"]},
        {"operations": [{"name": "coating"}]},
        {"coating": "yes"},
    ],
)
def test_r7_every_operations_shape(shop: Shop, instance, operations) -> None:
    job = planned_job(shop)
    shop.scan(f"{job}_1", operations)
    run_scanner(shop, instance)
    assert shop.job_op_row(job, "1", "op003")["status"] == "completed"
    assert shop.job_operations_json(job) == {"coating": True}


def test_r7_names_are_normalised(shop: Shop, instance) -> None:
    job = planned_job(shop)
    shop.scan(f"{job}_1", ["Kiss Cut"])
    shop.scan(f"{job}_1", [{"name": "KISS-CUT"}])
    run_scanner(shop, instance)
    assert shop.job_operations_json(job) == {"kiss_cut": True}


def test_r7_unknown_operation_next_to_a_known_one(shop: Shop, instance) -> None:
    job = planned_job(shop)
    scan_id = shop.scan(f"{job}_1", ["coating", "laminate", 42])
    run_scanner(shop, instance)
    assert shop.job_op_row(job, "1", "op003")["status"] == "completed"
    reasons = {(f["reason"], f["subject"]) for f in shop.failures(scan_id)}
    assert ("unknown_operation", "laminate") in reasons
    assert any(reason == "unusable_operations" for reason, _ in reasons)


@pytest.mark.parametrize("operations", [42, "coating", None, {"operations": "coating"}, [[1]]])
def test_r7_unusable_shapes_are_recorded(shop: Shop, instance, operations) -> None:
    job = planned_job(shop)
    scan_id = shop.scan(f"{job}_1", operations)
    run_scanner(shop, instance)
    assert shop.job_operations_json(job) == {}
    assert [f["reason"] for f in shop.failures(scan_id)] == ["unusable_operations"]


def test_r7_r20_a_mix_of_shapes_applies_the_list_and_records_the_other_keys(
    shop: Shop, instance
) -> None:
    job = planned_job(shop)
    scan_id = shop.scan(f"{job}_1", {"operations": ["coating"], "kiss_cut": True})
    run_scanner(shop, instance)
    assert shop.job_op_row(job, "1", "op003")["status"] == "completed"
    assert shop.job_op_row(job, "1", "op006")["status"] is None
    assert shop.job_operations_json(job) == {"coating": True}
    (failure,) = shop.failures(scan_id)
    assert failure["reason"] == "unusable_operations"
    assert "kiss_cut" in failure["detail"] and "ignored" in failure["detail"]


def test_r8_operation_without_code_still_updates_jobs_and_audit(shop: Shop, instance) -> None:
    job = planned_job(shop)
    scan_id = shop.scan(f"{job}_1", ["backscore"])
    run_scanner(shop, instance)
    assert shop.job_operations_json(job) == {"backscore": True}
    assert [a["operation"] for a in shop.audit(job)] == ["backscore"]
    assert shop.failures(scan_id, "unmapped_operation")[0]["subject"] == f"{job}/1/backscore"


def test_r8_the_shop_maps_an_operation_by_editing_the_table(urls, instance) -> None:
    with Shop(urls) as shop:
        job = planned_job(shop)
        shop.add_job_operation(job, "1", "op042")
        shop.execute(
            shop.logs,
            "UPDATE operation_codes SET operation_id = 'op042' WHERE operation = 'slitter'",
        )
        try:
            shop.scan(f"{job}_1", ["Slitter"])
            run_scanner(shop, instance)
            assert shop.job_op_row(job, "1", "op042")["status"] == "completed"
        finally:
            shop.execute(
                shop.logs,
                "UPDATE operation_codes SET operation_id = NULL WHERE operation = 'slitter'",
            )


def test_r8_operation_codes_names_are_normalised_like_scanned_names(urls, instance) -> None:
    """R8: the shop's rows 'Die Cut' → op010 (and a code-less 'DIE-CUT') mean die_cut, so scans
    of "Die Cut" and "die-cut" update the op010 rows instead of failing as unknown."""
    with Shop(urls) as shop:
        job = planned_job(shop)
        shop.add_job_operation(job, "1", "op010")
        shop.execute(
            shop.logs,
            "INSERT INTO operation_codes (operation, operation_id)"
            " VALUES ('Die Cut', 'op010'), ('DIE-CUT', NULL)",
        )
        try:
            first = shop.scan(f"{job}_1", {"Die Cut": True}, at=T0)
            second = shop.scan(f"{job}_1", ["die-cut"], at=T0 + timedelta(hours=1))
            run_scanner(shop, instance)
            row = shop.job_op_row(job, "1", "op010")
            assert (row["status"], row["source_id"]) == ("completed", second)
            assert shop.job_operations_json(job) == {"die_cut": True}
            assert shop.failures(first) == [] and shop.failures(second) == []
        finally:
            shop.execute(
                shop.logs,
                "DELETE FROM operation_codes WHERE operation IN ('Die Cut', 'DIE-CUT')",
            )


def test_r15_scanner_print_never_overrides_print_os(shop: Shop, instance) -> None:
    job = planned_job(shop)
    shop.map_files(f"{job}-P", [f"FILE_1_Labex_{job}_1", f"FILE_1_Labex_{job}_2"])
    shop.print_event(f"{job}-P", "ABORTED", at=T0)
    shop.process(instance, "print_os")
    later = shop.scan(f"{job}_1", ["print", "coating"], at=T0 + timedelta(hours=1))
    run_scanner(shop, instance)
    row = shop.job_op_row(job, "1", "op001")
    assert (row["status"], row["completed_by"]) == ("aborted", "print_os")
    assert shop.job_operations_json(job) == {"print": False, "coating": True}
    scanner_print = [
        a for a in shop.audit(job) if a["source_id"] == later and a["operation"] == "print"
    ]
    assert len(scanner_print) == 1 and scanner_print[0]["applied"] is False
    assert "not applied: the press's own print status takes precedence" in scanner_print[0]["notes"]


def test_r15_scanner_print_applies_where_print_os_never_wrote(shop: Shop, instance) -> None:
    job = planned_job(shop)
    shop.scan(f"{job}_1", ["print"])
    run_scanner(shop, instance)
    assert shop.job_operations_json(job) == {"print": True}
    assert shop.job_op_row(job, "1", "op001")["completed_by"] == "scanner"


def test_r15_late_older_scan_never_overrides_a_newer_one(shop: Shop, instance) -> None:
    job = planned_job(shop)
    newer = shop.scan(f"{job}_1", ["coating"], at=T0 + timedelta(hours=2), machine="coater-2")
    run_scanner(shop, instance)
    older = shop.scan(f"{job}_1", ["coating"], at=T0 + timedelta(hours=1), machine="coater-1")
    run_scanner(shop, instance)
    assert shop.job_op_row(job, "1", "op003")["source_id"] == newer
    audit = {a["source_id"]: a for a in shop.audit(job)}
    assert audit[newer]["applied"] is True and audit[older]["applied"] is False
    assert "not applied" in audit[older]["notes"]


def test_r5_r20_unrecognised_code_resolves_once_the_runlist_is_planned(urls, instance) -> None:
    with Shop(urls, retry_interval_seconds=0) as shop:
        job = planned_job(shop)
        scan_id = shop.scan(f"RL-late-{job}", ["coating"])
        run_scanner(shop, instance)
        failure = shop.failures(scan_id, "unrecognised_code")[0]
        assert failure["retryable"] and failure["resolved_at"] is None
        shop.plan_runlist(f"RL-late-{job}", [imposition(shop, f"{job}-late", job)])
        run_scanner(shop, instance)
        assert shop.failures(scan_id, "unrecognised_code")[0]["resolved_at"] is not None
        assert shop.job_op_row(job, "1", "op003")["status"] == "completed"


def test_r16_missing_job_and_missing_rows_are_recorded(shop: Shop, instance) -> None:
    ghost = planned_job(shop, in_jobs=False)
    bare = shop.add_job()  # in jobs, but no job_operations rows
    scan_a, scan_b = shop.scan(f"{ghost}_1", ["coating"]), shop.scan(f"{bare}_1", ["coating"])
    run_scanner(shop, instance)
    assert shop.failures(scan_a, "missing_job")[0]["retryable"] is True
    assert shop.job_op_row(ghost, "1", "op003")["status"] == "completed"
    assert shop.failures(scan_b, "missing_operation_row")[0]["subject"] == f"{bare}/1/coating"
    assert shop.job_operations_json(bare) == {"coating": True}


def test_second_scanner_process_changes_nothing(shop: Shop, instance) -> None:
    job = planned_job(shop)
    shop.plan_runlist(f"RL-{job}", [imposition(shop, f"{job}-I", job)])
    shop.scan(f"RL-{job}", {"operations": ["coating", "kiss_cut"]})
    shop.scan("XYZ-???", ["coating"])
    run_scanner(shop, instance)
    before = shop.snapshot()
    assert shop.process(instance, "scanner").runs == []
    assert shop.snapshot() == before


def test_r20_runlist_scan_before_its_mapping_is_retried_and_then_applied(urls, instance) -> None:
    with Shop(urls, retry_interval_seconds=0) as shop:
        a, b = planned_job(shop), planned_job(shop)
        mapped = imposition(shop, f"{a}-M", a)
        for op in OPS:
            shop.add_imposition_operation(f"{a}-U", op)
        shop.plan_runlist(f"RL-{a}", [mapped, f"{a}-U"])
        scan_id = shop.scan(f"RL-{a}", ["coating"])
        run_scanner(shop, instance)
        assert shop.failures(scan_id, "unmapped_imposition")[0]["retryable"] is True
        assert shop.job_operations_json(b) == {}
        shop.map_files(f"{a}-U", [f"FILE_1_Labex_{b}_1"], with_op_row=False)
        run_scanner(shop, instance)
        assert shop.job_operations_json(b) == {"coating": True}
        assert shop.failures(scan_id, "unmapped_imposition")[0]["resolved_at"] is not None


def test_r17_backfilling_scans_keeps_every_audit_verdict(shop: Shop, instance) -> None:
    from jobstatus_dagster.pipeline.runner import backfill

    job = planned_job(shop)
    first = shop.scan(f"{job}_1", ["coating"], at=T0 + timedelta(hours=5))
    run_scanner(shop, instance)
    shop.scan(f"{job}_1", ["coating"], at=T0 + timedelta(hours=6))
    run_scanner(shop, instance)
    before = shop.snapshot()
    assert backfill(shop.definitions(), instance, "scanner", first - 1, first).success
    assert shop.snapshot() == before


def test_r20_missing_operation_row_and_uncoded_operation_are_retried_until_resolved(
    urls, instance
) -> None:
    """R20: a *_operations row planned later and a code the shop assigns later (R8) are data
    that may arrive late: retried, then applied and resolved."""
    with Shop(urls, retry_interval_seconds=0) as shop:
        job = shop.add_job()  # in jobs, no job_operations rows yet
        scan_id = shop.scan(f"{job}_1", ["coating", "backscore"])
        run_scanner(shop, instance)
        missing = shop.failures(scan_id, "missing_operation_row")
        uncoded = shop.failures(scan_id, "unmapped_operation")
        assert [(f["subject"], f["retryable"]) for f in missing + uncoded] == [
            (f"{job}/1/coating", True),
            (f"{job}/1/backscore", True),
        ]
        shop.add_job_operation(job, "1", "op003")
        shop.add_job_operation(job, "1", "op043")
        shop.execute(
            shop.logs,
            "UPDATE operation_codes SET operation_id = 'op043' WHERE operation = 'backscore'",
        )
        try:
            run_scanner(shop, instance)
            assert shop.job_op_row(job, "1", "op003")["status"] == "completed"
            assert shop.job_op_row(job, "1", "op043")["status"] == "completed"
            assert all(f["resolved_at"] is not None for f in shop.failures(scan_id))
        finally:
            shop.execute(
                shop.logs,
                "UPDATE operation_codes SET operation_id = NULL WHERE operation = 'backscore'",
            )


def test_r20_foreign_file_in_a_scanned_runlist_is_recorded_once_per_file_id(
    shop: Shop, instance
) -> None:
    job = planned_job(shop)
    name = imposition(shop, f"{job}-F", job)
    foreign = f"FILE_1_Acme_{job}_9"
    shop.map_files(name, [foreign, "garbage-in-runlist.pdf"], with_op_row=False)
    shop.plan_runlist(f"RL-{job}-F", [name])
    scans = [shop.scan(f"RL-{job}-F", ["coating"]) for _ in range(2)]
    run_scanner(shop, instance)
    later = shop.scan(f"RL-{job}-F", ["kiss_cut"])
    run_scanner(shop, instance)

    assert shop.job_op_row(job, "1", "op003")["status"] == "completed"
    recorded = [f for f in shop.failures(0, "foreign_file") if f["subject"] == foreign]
    assert [(f["source_type"], f["retryable"], f["attempts"]) for f in recorded] == [
        ("imposition_file_mapping", False, 1)
    ]
    for scan_id in [*scans, later]:
        assert [(f["reason"], f["subject"]) for f in shop.failures(scan_id)] == [
            ("bad_file_id", "garbage-in-runlist.pdf")
        ]
