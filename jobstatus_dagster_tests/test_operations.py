"""Operating it in Dagster (issue 4, docs/rules.md R18–R21 and §6): lineage, materializations,
marker-range backfills, retries, failure visibility, serialization and asset checks."""

import dagster as dg
import pytest

from jobstatus_dagster.pipeline.assets import (
    FILE_MAPPING,
    JOB_OPERATIONS,
    JOB_STATUS_UPDATES,
    PRINT_OS_TABLE,
    SCANNED_CODES,
)
from jobstatus_dagster.pipeline.partitions import bucket_key
from jobstatus_dagster.pipeline.runner import backfill, execute_window, process_source
from jobstatus_dagster.pipeline.windows import PlannedRun
from jobstatus_dagster.source import PRINT_OS_SOURCE, SCANNER_SOURCE
from jobstatus_dagster_tests.backlog import fill_small_backlog
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.cli import start_cli


@pytest.fixture(scope="module")
def loaded_shop(urls):
    with Shop(urls) as shop:
        fill_small_backlog(shop)
        yield shop


def test_asset_graph_edges_run_from_shop_tables_through_processing_to_our_tables(
    loaded_shop: Shop,
) -> None:
    graph = loaded_shop.definitions().resolve_asset_graph()
    print_os, scanner = PRINT_OS_SOURCE.processing_key, SCANNER_SOURCE.processing_key
    assert {PRINT_OS_TABLE, FILE_MAPPING} <= graph.get(print_os).parent_keys
    assert {SCANNED_CODES, FILE_MAPPING} <= graph.get(scanner).parent_keys
    for target in (JOB_OPERATIONS, JOB_STATUS_UPDATES):
        assert graph.get(target).parent_keys == {print_os, scanner}
    assert not graph.get(PRINT_OS_TABLE).is_executable  # the shop's tables are external


def test_runs_materialize_the_partition_and_the_tables_with_window_metadata(
    loaded_shop: Shop, instance
) -> None:
    outcome = loaded_shop.process(instance, "print_os")
    run_id = outcome.runs[0].run_id
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    by_key = {r.event_log_entry.dagster_event.asset_key: r for r in records}
    processing = by_key[PRINT_OS_SOURCE.processing_key].event_log_entry.dagster_event
    assert processing.partition == bucket_key(114)
    metadata = processing.event_specific_data.materialization.metadata
    assert metadata["window"].value == "print_os (0, 114]"
    assert metadata["rows_read"].value == 8 and metadata["failures"].value > 0
    table = by_key[JOB_STATUS_UPDATES].event_log_entry.dagster_event
    table_metadata = table.event_specific_data.materialization.metadata
    assert table_metadata["window"].value == "print_os (0, 114]"
    assert table_metadata["rows_changed"].value == loaded_shop.scalar(
        loaded_shop.jm, "SELECT count(*) FROM job_status_updates WHERE run_id = :r", r=run_id
    )


def test_r21_backfill_over_a_range_twice_changes_nothing_and_keeps_the_marker(
    loaded_shop: Shop, instance
) -> None:
    loaded_shop.process(instance, "print_os")
    marker = loaded_shop.marker()
    before = loaded_shop.snapshot()
    for _ in range(2):
        outcome = backfill(loaded_shop.definitions(), instance, "print_os", 99, 110)
        assert outcome.success and [r.window for r in outcome.runs] == ["print_os:99-110"]
        assert loaded_shop.marker() == marker
    assert loaded_shop.snapshot() == before


def test_ui_backfill_of_a_partition_derives_the_window_from_its_key(
    loaded_shop: Shop, instance
) -> None:
    """A backfill launched from the UI passes no run config: the key gives the range."""
    loaded_shop.process(instance, "print_os")
    before, marker = loaded_shop.snapshot(), loaded_shop.marker()
    job = loaded_shop.definitions().resolve_job_def("process_print_os")
    key = bucket_key(100)
    instance.add_dynamic_partitions("print_os_marker_ranges", [key])
    result = job.execute_in_process(instance=instance, partition_key=key)
    assert result.success
    output = result.output_for_node("print_os_processing")
    assert output["window"] == "print_os (0, 10000]" and output["rows_read"] == 8
    assert loaded_shop.snapshot() == before and loaded_shop.marker() == marker


def test_r18_transient_error_on_first_attempt_succeeds_on_retry(
    urls, instance, monkeypatch
) -> None:
    with Shop(urls) as shop:
        shop.map_files("T-I1", ["FILE_1_Labex_8001_1_1"])
        shop.print_event("T-I1", "PRINTED")
        monkeypatch.setenv("JOBSTATUS_TRANSIENT_ONCE", "write")
        outcome = shop.process(instance, "print_os")
        retried = instance.get_records_for_run(
            outcome.runs[-1].run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
        ).records
        assert len(retried) == 1
        assert "injected transient error" in str(
            retried[0].event_log_entry.dagster_event.event_specific_data
        )
        assert shop.imposition_print_row("T-I1")["status"] == "completed"


def test_failed_run_names_its_window_and_rerunning_it_repairs(urls, instance) -> None:
    with Shop(urls) as shop:
        shop.map_files("F-I1", ["FILE_1_Labex_8002_1_1"])
        _, marker = shop.print_event("F-I1", "PRINTED")
        shop.execute(shop.logs, "ALTER TABLE imposition_file_mapping RENAME TO ifm_hidden")
        try:
            failed = process_source(shop.definitions(), instance, "print_os", "test")
        finally:
            shop.execute(shop.logs, "ALTER TABLE ifm_hidden RENAME TO imposition_file_mapping")
        (run,) = failed.runs
        assert not run.success
        assert "print_os (" in run.error and f", {marker}]" in run.error
        assert "UndefinedTable" in run.error
        retried = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY
        ).records
        assert retried == []  # a permanent error is not retried
        assert shop.marker() < marker
        # Re-executing the same window (what the UI's re-execute does) processes it.
        dagster_run = instance.get_run_by_id(run.run_id)
        window = dagster_run.tags["jobstatus/window"].split(":")[1].split("-")
        job = shop.definitions().resolve_job_def("process_print_os")
        again = execute_window(
            job, instance, PlannedRun("print_os", int(window[0]), int(window[1]), "rerun"), "test"
        )
        assert again.success and shop.marker() == marker
        assert shop.imposition_print_row("F-I1")["status"] == "completed"


def test_r19_concurrent_processors_of_one_source_serialize(urls, tmp_path) -> None:
    """Three `jobstatus process` processes at once (as sensor, CLI and API runs would be):
    they wait for each other on the marker lock instead of failing or doubling."""
    with Shop(urls) as shop:
        shop.add_job("8003_1")
        shop.add_job_operation("8003_1", "1")
        for n in range(6):
            shop.map_files(f"C-I{n}", [f"FILE_1_Labex_8003_1_{n}"])
            shop.print_event(f"C-I{n}", "PRINTED")
        processes = [start_cli(urls, tmp_path, "process", "--source", "print_os") for _ in range(3)]
        for process in processes:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
        assert shop.job_print_row("8003_1", "1")["notes"] == "6 of 6 files printed"
        assert len(shop.audit("8003_1")) == 6
        duplicates = shop.scalar(
            shop.jm,
            "SELECT count(*) FROM job_status_updates GROUP BY source_type, source_id, job_id,"
            " version_tag, operation HAVING count(*) > 1",
        )
        assert duplicates is None
