"""Retention (issue 20): old successful runs leave Dagster's storage with their events and tags;
failed runs and backfills' runs stay longer; recent runs stay; our tables are never touched."""

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from jobstatus_dagster.config import load_settings
from jobstatus_dagster.definitions import definitions_from_settings
from jobstatus_dagster.pipeline.retention import JOB_NAME, RetentionPolicy, prune_runs
from jobstatus_dagster_tests.shop import Shop


def finished_run(
    shop: Shop, instance: dg.DagsterInstance, ok: bool, tags: dict[str, str] | None = None
) -> str:
    """A run of the print-OS job as a worker leaves it: succeeded or failed, with its events."""
    job = shop.definitions().resolve_job_def("process_print_os")
    run = instance.create_run_for_job(
        job,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={"jobstatus/source": "print_os", **(tags or {})},
    )
    if ok:
        event = dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_SUCCESS.value, job_name=run.job_name
        )
        instance.report_dagster_event(event, run_id=run.run_id)
    else:
        instance.report_run_failed(run, "boom")
    return run.run_id


def our_tables(shop: Shop) -> dict:
    with shop.jm.connect() as conn:
        counts = {
            table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()  # noqa: S608
            for table in ("job_status_updates", "processing_failures", "alert_incidents")
        }
    return {"snapshot": shop.snapshot(), "counts": counts}


@pytest.fixture(scope="module")
def shop(urls):
    with Shop(urls) as s:
        yield s


def test_retention_deletes_old_successful_runs_and_keeps_failed_backfill_and_recent_ones(
    shop: Shop, instance
) -> None:
    shop.add_job("9401_1")
    shop.add_job_operation("9401_1", "1")
    shop.map_files("RT-I1", ["FILE_1_Labex_9401_1_1"])
    processed = []
    for _ in range(3):  # real processing runs, with their ~40 events each
        shop.print_event("RT-I1", "PRINTED")
        processed += [run.run_id for run in shop.process(instance).runs]
    old_ok = processed + [finished_run(shop, instance, ok=True) for _ in range(3)]
    old_failed = [finished_run(shop, instance, ok=False) for _ in range(2)]
    old_backfill = [
        finished_run(shop, instance, ok=True, tags={"dagster/backfill": "abcdefgh"})
        for _ in range(3)
    ]
    time.sleep(0.2)
    boundary = datetime.now(UTC)
    time.sleep(0.2)
    recent_ok = [finished_run(shop, instance, ok=True) for _ in range(2)]
    assert instance.get_records_for_run(processed[0]).records  # events to delete
    before = our_tables(shop)
    assert before["counts"]["job_status_updates"] > 0

    # 30 days after the boundary: small batches and a budget, as over a year of history.
    policy = RetentionPolicy(
        run_retention_days=30, failed_run_retention_days=180, batch_size=2, max_deletions_per_run=4
    )
    later = boundary + timedelta(days=30)
    first = prune_runs(instance, policy, now=later)
    assert (first.successful, first.older) == (4, 0)
    second = prune_runs(instance, policy, now=later)
    assert second.successful == len(old_ok) - 4
    assert second.kept_backfill_runs == len(old_backfill)
    assert prune_runs(instance, policy, now=later).deleted == 0

    def exists(run_id: str) -> bool:
        return instance.get_run_by_id(run_id) is not None

    assert not any(exists(r) for r in old_ok)
    assert all(exists(r) for r in old_failed + old_backfill + recent_ok)
    # A deleted run's events and tags are gone with it.
    assert instance.get_records_for_run(processed[0]).records == []
    assert not instance.get_run_records(dg.RunsFilter(run_ids=old_ok))
    # The audit trail and every table of ours: untouched.
    assert our_tables(shop) == before

    # Past the longer limit, failed and backfill runs go too (and the recent successful ones,
    # by then past the shorter), at most 4 per run.
    much_later = boundary + timedelta(days=180)
    runs = [prune_runs(instance, policy, now=much_later) for _ in range(3)]
    assert [(p.older, p.successful) for p in runs] == [(4, 0), (1, 2), (0, 0)]
    assert not any(exists(r) for r in old_failed + old_backfill + recent_ok)
    assert our_tables(shop) == before


def _age(instance: dg.DagsterInstance, run_id: str, days: float) -> None:
    """The run as if it had finished ``days`` ago: its last update moved back (what retention
    compares with the days configured)."""
    with instance.run_storage.connect() as conn:
        conn.execute(
            sa.text(
                "UPDATE runs SET update_timestamp = update_timestamp - make_interval(secs => :s)"
                " WHERE run_id = :run_id"
            ),
            {"s": days * 86400, "run_id": run_id},
        )


def test_the_retention_job_deletes_by_the_days_configured_in_the_environment(
    shop: Shop, instance, monkeypatch
) -> None:
    """JOBSTATUS_RUN_RETENTION_DAYS=7 and JOBSTATUS_FAILED_RUN_RETENTION_DAYS=20 (not the
    defaults, 30 and 180), read as the code location reads them: the hourly job deletes a
    successful run 8 days old and keeps one 6 days old, deletes a failed run 21 days old and
    keeps one 19 days old."""
    monkeypatch.setenv("JOBSTATUS_RUN_RETENTION_DAYS", "7")
    monkeypatch.setenv("JOBSTATUS_FAILED_RUN_RETENTION_DAYS", "20")
    ages = {("ok", 8): False, ("ok", 6): True, ("failed", 21): False, ("failed", 19): True}
    runs = {}
    for kind, days in ages:
        runs[kind, days] = finished_run(shop, instance, ok=kind == "ok")
        _age(instance, runs[kind, days], days)
    definitions = definitions_from_settings(load_settings(), shop.urls.jobmanager, shop.urls.logs)
    result = definitions.resolve_job_def(JOB_NAME).execute_in_process(instance=instance)
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type is dg.DagsterEventType.STEP_OUTPUT]
    metadata = output.step_output_data.metadata
    assert metadata["run_retention_days"].value == 7
    assert metadata["failed_run_retention_days"].value == 20
    kept = {key: instance.get_run_by_id(run_id) is not None for key, run_id in runs.items()}
    assert kept == ages


def test_the_instance_purges_launched_and_failed_ticks_too(instance) -> None:
    """dagster.yaml's retention (the fixture's instance reads the product's file): Dagster's
    defaults would keep every sensor tick that launched or failed, and every schedule tick."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    sensor = instance.get_tick_retention_settings(InstigatorType.SENSOR)
    assert sensor == {
        TickStatus.SKIPPED: 1,
        TickStatus.SUCCESS: 30,
        TickStatus.FAILURE: 90,
        TickStatus.STARTED: 90,
    }
    schedule = instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
    assert set(schedule.values()) == {90}
