"""Asset checks: each passes on good data and fails on data made bad on purpose."""

import dagster as dg
import pytest

from jobstatus_dagster_tests.shop import Shop

CHECK_NAMES = {
    "unresolved_failures_are_recent",
    "file_ids_match_the_pattern",
    "markers_keep_up",
    "print_flag_agrees_with_job_operations",
}


def run_checks(shop: Shop, instance) -> dict[str, dg.AssetCheckEvaluation]:
    """Every check's evaluation. The run fails exactly when the ERROR check (blocking) fails:
    WARN checks never fail it (docs/decisions.md, "Which checks page")."""
    result = (
        shop.definitions()
        .resolve_job_def("data_quality_checks")
        .execute_in_process(instance=instance, raise_on_error=False)
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    failed_errors = [
        name
        for name, e in evaluations.items()
        if not e.passed and e.severity is dg.AssetCheckSeverity.ERROR
    ]
    assert result.success == (not failed_errors), failed_errors
    return evaluations


@pytest.fixture(scope="module")
def good_shop(urls, instance):
    with Shop(urls, max_marker_lag=2) as shop:
        for job in ("9001_1", "9002_2"):
            shop.add_job(job)
            shop.add_job_operation(job, "1")
        shop.map_files("Q-I1", ["FILE_1_Labex_9001_1_1", "FILE_1_Labex_9002_2_1"])
        shop.map_files("Q-I2", ["FILE_1_Labex_9002_2_2"])
        shop.print_event("Q-I1", "PRINTED")
        shop.process(instance, "print_os")
        yield shop


def test_all_checks_pass_on_good_data(good_shop: Shop, instance) -> None:
    evaluations = run_checks(good_shop, instance)
    assert set(evaluations) == CHECK_NAMES
    assert {name for name, e in evaluations.items() if not e.passed} == set()
    agree = evaluations["print_flag_agrees_with_job_operations"]
    assert agree.metadata["jobs_checked"].value == 2


def test_r4_check_fails_on_a_bad_file_id(good_shop: Shop, instance) -> None:
    good_shop.execute(
        good_shop.logs,
        "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES ('Q-X', 'scan.pdf')",
    )
    try:
        check = run_checks(good_shop, instance)["file_ids_match_the_pattern"]
        assert not check.passed and "scan.pdf" in check.metadata["sample"].value
    finally:
        good_shop.execute(
            good_shop.logs, "DELETE FROM imposition_file_mapping WHERE imposition_id = 'Q-X'"
        )


def test_failure_age_check_fails_on_an_old_unresolved_failure(good_shop: Shop, instance) -> None:
    good_shop.execute(
        good_shop.jm,
        "INSERT INTO processing_failures (source_type, source_id, reason, subject, first_attempt_at)"
        " VALUES ('print_os', -1, 'unmapped_imposition', 'Q-OLD', now() - interval '3 days')",
    )
    try:
        check = run_checks(good_shop, instance)["unresolved_failures_are_recent"]
        assert not check.passed and check.metadata["unresolved"].value == 1
    finally:
        good_shop.execute(good_shop.jm, "DELETE FROM processing_failures WHERE source_id = -1")


def test_marker_lag_check_fails_when_rows_pile_up(good_shop: Shop, instance) -> None:
    for _ in range(3):
        good_shop.print_event("Q-I2", "PRINTED")
    check = run_checks(good_shop, instance)["markers_keep_up"]
    assert not check.passed and check.metadata["print_os_rows_behind"].value == 3
    good_shop.process(instance, "print_os")
    assert run_checks(good_shop, instance)["markers_keep_up"].passed


def test_print_agreement_check_fails_when_jobs_and_job_operations_disagree(
    good_shop: Shop, instance
) -> None:
    good_shop.execute(
        good_shop.jm,
        "UPDATE jobs SET operations = jsonb_set(operations, '{print}',"
        " to_jsonb(NOT (operations ->> 'print')::boolean)) WHERE job_id = '9002_2'",
    )
    check = run_checks(good_shop, instance)["print_flag_agrees_with_job_operations"]
    assert not check.passed and "9002_2" in check.metadata["sample"].value
    assert check.severity is dg.AssetCheckSeverity.ERROR and check.blocking


def test_r20_other_customers_file_ids_are_not_data_quality_failures(
    good_shop: Shop, instance
) -> None:
    good_shop.execute(
        good_shop.logs,
        "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES"
        " ('Q-F', 'FILE_1_Acme_4604_5889'), ('Q-F', E'FILE_1_Labex_9001_1_7\\n')",
    )
    good_shop.execute(
        good_shop.jm,
        "INSERT INTO processing_failures (source_type, source_id, reason, subject, first_attempt_at)"
        " VALUES ('imposition_file_mapping', 0, 'foreign_file', 'FILE_1_Acme_4604_5889',"
        " now() - interval '3 days')",
    )
    try:
        checks = run_checks(good_shop, instance)
        pattern = checks["file_ids_match_the_pattern"]
        assert pattern.passed and pattern.metadata["other_customers"].value == 1
        assert checks["unresolved_failures_are_recent"].passed
    finally:
        good_shop.execute(
            good_shop.logs, "DELETE FROM imposition_file_mapping WHERE imposition_id = 'Q-F'"
        )
        good_shop.execute(good_shop.jm, "DELETE FROM processing_failures WHERE source_id = 0")
