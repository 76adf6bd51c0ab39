"""The print-OS sensor: one look per tick, several windows per look, run keys, readable cursor,
and no write to the shop's database (docs/rules.md §6, R18, R19)."""

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.pipeline.partitions import bucket_key
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.sensors import WINDOWS_PER_TICK
from jobstatus_dagster.pipeline.windows import IN_FLIGHT
from jobstatus_dagster_tests.shop import Shop

WINDOW_0 = {
    "ops": {
        "print_os_processing": {
            "ops": {"load_print_os_window": {"config": {"from_marker": 0, "to_marker": 0}}}
        }
    }
}


def window_config(request: dg.RunRequest) -> dict:
    ops = request.run_config["ops"]["print_os_processing"]["ops"]
    return ops["load_print_os_window"]["config"]


def window(request: dg.RunRequest) -> tuple[int, int]:
    config = window_config(request)
    return config["from_marker"], config["to_marker"]


@dataclass
class Tick:
    run_requests: list[dg.RunRequest]
    skip_message: str | None
    cursor: str | None
    partition_keys: list[str] = field(default_factory=list)  # partitions the tick adds

    @property
    def seen(self) -> dict:
        return json.loads(self.cursor)


def read_only(url: str) -> str:
    """The same database through sessions that refuse every write."""
    options = quote("-c default_transaction_read_only=on")
    return f"{url}{'&' if '?' in url else '?'}options={options}"


def evaluate(
    shop: Shop, instance: dg.DagsterInstance, cursor: str | None = None, **processing
) -> Tick:
    """One tick, as the daemon would evaluate it; the shop's database is read-only to it."""
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")
    resources = {
        "jobmanager": PostgresDatabase(url=read_only(shop.urls.jobmanager)),
        "processing": ProcessingSettings(**processing),
    }
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult), result  # one answer per tick, always
    keys = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
    skip = result.skip_reason.skip_message if result.skip_reason else None
    return Tick(list(result.run_requests or []), skip, result.cursor, keys)


def run(shop: Shop, instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    job = shop.definitions().resolve_job_def("process_print_os")
    for key in [request.partition_key]:
        if not instance.has_dynamic_partition("print_os_marker_ranges", key):
            instance.add_dynamic_partitions("print_os_marker_ranges", [key])
    result = job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags=request.tags,
        partition_key=request.partition_key,
    )
    assert result.success


def queue(shop: Shop, instance: dg.DagsterInstance, request: dg.RunRequest) -> dg.DagsterRun:
    """What the daemon does with a request: a run waiting for its source's turn (NOT_STARTED:
    a QUEUED run needs a code location's origin, which a test instance has not)."""
    job = shop.definitions().resolve_job_def("process_print_os")
    return instance.create_run_for_job(
        job,
        run_config=request.run_config,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags=request.tags,
    )


def cancel_in_flight(instance: dg.DagsterInstance) -> None:
    for queued in instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT)):
        instance.report_run_canceled(queued)


def test_sensor_skips_with_the_current_marker_when_nothing_is_new(shop: Shop, instance) -> None:
    result = evaluate(shop, instance)
    assert result.run_requests == []
    assert result.skip_message == f"nothing past the print_os marker {shop.marker()}"


def test_sensor_requests_consecutive_windows_of_at_most_chunk_rows_in_one_tick(
    shop: Shop, instance
) -> None:
    marker = shop.marker()
    markers = [shop.print_event("IMP-S", "PRINTED")[1] for _ in range(5)]
    result = evaluate(shop, instance, chunk_size=2)
    # Three windows of at most two rows each, one after the other from the marker.
    assert [window(r) for r in result.run_requests] == [
        (marker, markers[1]),
        (markers[1], markers[3]),
        (markers[3], markers[4]),
    ]
    for request in result.run_requests:
        lo, hi = window(request)
        assert request.tags["jobstatus/source"] == "print_os"
        assert request.tags["jobstatus/window"] == f"print_os:{lo}-{hi}"
        assert request.run_key == f"print_os:{lo}-{hi}#0"
        assert request.partition_key == bucket_key(hi)
    # The marker ranges become partitions the data team can see and backfill, added by the
    # daemon from the tick's answer, each once.
    assert result.partition_keys == sorted({bucket_key(m) for m in markers})
    assert result.seen["requested_up_to"] == markers[4]
    assert result.seen["waiting_runs"] == 3

    for request in result.run_requests:  # the queue runs them in order
        run(shop, instance, request)
    assert shop.marker() == markers[4]
    assert evaluate(shop, instance).run_requests == []
    assert evaluate(shop, instance).partition_keys == []


def test_sensor_never_requests_a_waiting_window_again(shop: Shop, instance) -> None:
    """While the runs of one look wait in the queue, the next look asks only for what lies past
    them, and at most WINDOWS_PER_TICK runs of the source wait at once."""
    marker = shop.marker()
    markers = [shop.print_event("IMP-Q", "PRINTED")[1] for _ in range(3)]
    first = evaluate(shop, instance, chunk_size=1)
    assert [window(r) for r in first.run_requests] == [
        (marker, markers[0]),
        (markers[0], markers[1]),
        (markers[1], markers[2]),
    ]
    try:
        for request in first.run_requests:
            queue(shop, instance, request)
        # Nothing new: the next look requests nothing and says why.
        again = evaluate(shop, instance, cursor=first.cursor, chunk_size=1)
        assert again.run_requests == []
        assert again.skip_message == (
            f"3 run(s) for print_os already queued or running, up to marker {markers[2]}"
        )
        # New rows: only the windows past the queued ones, up to the bound.
        more = [shop.print_event("IMP-Q", "PRINTED")[1] for _ in range(WINDOWS_PER_TICK + 2)]
        later = evaluate(shop, instance, cursor=again.cursor, chunk_size=1)
        assert len(later.run_requests) == WINDOWS_PER_TICK - 3
        assert window(later.run_requests[0]) == (markers[2], more[0])
        requested = {r.tags["jobstatus/window"] for r in first.run_requests}
        assert requested.isdisjoint(r.tags["jobstatus/window"] for r in later.run_requests)
    finally:
        cancel_in_flight(instance)
    # Canceled runs are finished: their windows are requested again, under fresh keys.
    retried = evaluate(shop, instance, chunk_size=1).run_requests
    assert window(retried[0]) == (marker, markers[0])
    assert retried[0].run_key == f"print_os:{marker}-{markers[0]}#1"
    for request in retried:
        run(shop, instance, request)
    while requests := evaluate(shop, instance, chunk_size=100).run_requests:
        for request in requests:
            run(shop, instance, request)
    assert shop.marker() == more[-1]


def test_sensor_requests_a_failed_window_again_under_a_fresh_run_key(shop: Shop, instance) -> None:
    """The database marker decides what is unprocessed: a window whose run failed is still past
    it, and a used run key would be skipped forever (DAGSTER_NOTES)."""
    shop.print_event("IMP-F", "PRINTED")
    (first,) = evaluate(shop, instance).run_requests
    job = shop.definitions().resolve_job_def("process_print_os")
    failed = instance.create_run_for_job(
        job, run_config=first.run_config, status=dg.DagsterRunStatus.FAILURE, tags=first.tags
    )
    assert failed.is_finished
    (second,) = evaluate(shop, instance).run_requests
    assert second.tags["jobstatus/window"] == first.tags["jobstatus/window"]
    assert second.run_key != first.run_key
    run(shop, instance, second)


def test_sensor_ignores_runs_that_name_no_window_but_still_plans(shop: Shop, instance) -> None:
    """A run without a window (a UI backfill, a re-execution) waits in the same queue: the
    sensor still requests the next window; the queue keeps them one at a time."""
    shop.print_event("IMP-S", "PRINTED")
    job = shop.definitions().resolve_job_def("process_print_os")
    other = instance.create_run_for_job(
        job,
        run_config=WINDOW_0,
        status=dg.DagsterRunStatus.NOT_STARTED,
        tags={"jobstatus/source": "print_os"},
    )
    try:
        (request,) = evaluate(shop, instance).run_requests
        assert window(request)[0] == shop.marker()
    finally:
        instance.report_run_canceled(other)
    run(shop, instance, request)


def test_sensor_cursor_is_readable_and_an_unreadable_one_counts_as_none(
    shop: Shop, instance
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    tick = evaluate(shop, instance, cursor="not json")
    seen = tick.seen
    assert seen["marker_seen"] == shop.marker()
    looked_at = datetime.strptime(seen["looked_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= looked_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert seen["requested_up_to"] == shop.marker() and seen["waiting_runs"] == 0
    assert set(seen) == {
        "marker_seen",
        "looked_at",
        "requested_up_to",
        "waiting_runs",
        "sweep_after",
        "observed",  # the backlog last shown on the source table (test_source_freshness)
    }
    for unreadable in ('{"sweep_after": "x"}', "[1, 2]", '{"marker_seen": {}}'):
        assert evaluate(shop, instance, cursor=unreadable).skip_message.startswith("nothing past")


def test_a_tick_never_writes_to_the_shop_database(shop: Shop, instance) -> None:
    """The sensor's sessions are read-only (``evaluate``): any write would fail the tick. Here
    also with a clean history slice to pass over and new rows to plan, where ticks once
    advanced the sweep; the stored sweep position and the marker stay as they were."""

    def stored() -> tuple:
        with shop.jm.connect() as conn:
            return tuple(
                conn.execute(
                    sa.text(
                        "SELECT last_processed_id, sweep_marker, sweep_source_id, updated_at"
                        " FROM processing_markers WHERE marker_type = 'print_os'"
                    )
                ).one()
            )

    before = stored()
    idle = evaluate(shop, instance, sweep_rows=1)
    assert idle.skip_message.startswith("nothing past") and idle.seen["sweep_after"] is not None
    shop.print_event("IMP-W", "PRINTED")
    busy = evaluate(shop, instance, cursor=idle.cursor, sweep_rows=1)
    assert len(busy.run_requests) == 1
    assert stored() == before
    run(shop, instance, busy.run_requests[0])


def test_sensor_looks_at_the_source_once_per_interval(shop: Shop) -> None:
    """The UI shows the sensor's real cadence: its minimum interval is the configured one, and
    every tick is a look at the source. Its description speaks the shop's language."""
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")
    assert sensor.minimum_interval_seconds == 30  # build_definitions' default
    assert "30 s" in sensor.description
    assert not re.search(r"\bR\d+\b", sensor.description)
    scanner = shop.definitions().resolve_sensor_def("scanner_sensor")
    assert "barcode scans" in scanner.description


def test_definitions_load(shop: Shop) -> None:
    dg.Definitions.validate_loadable(shop.definitions())


def test_dagster_definitions_validate_on_the_workspace(urls) -> None:
    """The CLI check CI and the UI rely on: the code location loads from workspace.yaml."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from jobstatus_dagster.db import to_sqlalchemy_url
    from jobstatus_dagster.instance import WORKSPACE_YAML

    project = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "JOBSTATUS_JOBMANAGER_URL": urls.jobmanager,
        "JOBSTATUS_LOGS_URL": urls.logs,
        "JOBSTATUS_DAGSTER_STORAGE_URL": to_sqlalchemy_url(urls.dagster, "psycopg2"),
    }
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-w",
            str(WORKSPACE_YAML),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jobstatus" in result.stdout + result.stderr
