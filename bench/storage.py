"""What a steady day adds to the `dagster` database and to our tables, and a year of it with and
without retention (issue 20). Run by hand: ``python -m bench.storage`` (bench/README.md).

1. *One steady day, measured.* A demo shop (``generate_shop``) is processed once; then
   ``--windows`` times a live-shop tick (``simulate_tick``: a few press events and scans) is
   followed by one real processing run per source (``process_source``). The growth of every
   table of both databases over those windows, divided by the windows, times the windows of a
   day, is a day. Ticks are measured the same way from ticks created through the instance.
2. *A year, simulated.* The runs of one measured window (rows of ``runs``, ``run_tags`` and
   ``event_logs``) and ticks are cloned in SQL, a day of them stamped per simulated day; after
   each day the retention job's function (``prune_runs``) runs with that day as "now", and
   ticks are purged as the daemon purges them under dagster.yaml's ``retention:``. At
   checkpoints: the database size (after a plain VACUUM, as autovacuum would leave it), and
   the time of the runs page's query, the sensor page's query, the source sensor's run
   queries and one whole sensor tick. Then the same year is added again without pruning: the
   same figures without retention.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from bench.common import log, machine_line, print_table
from jobstatus_dagster.db import to_sqlalchemy_url
from jobstatus_dagster.demo import generate_shop, simulate_tick
from jobstatus_dagster.instance import instance_overrides
from jobstatus_dagster.pipeline.ops import SOURCE_TAG, WINDOW_TAG
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.retention import RetentionPolicy, prune_runs
from jobstatus_dagster.pipeline.runner import process_source
from jobstatus_dagster.pipeline.windows import FINISHED, IN_FLIGHT
from jobstatus_dagster_tests.shop import Shop
from jobstatus_testkit.databases import embedded_server

# A working day of the shop (issue 20's profile): 16 h of work, each source's sensor queueing a
# run every 30 s while rows arrive, webhook deliveries once a minute, the checks every 15 min,
# the retention job hourly; sensor ticks all day (two sources and the alerts every 30 s, the
# webhook sensor every 10 s).
WORK_HOURS = 16
WINDOWS_PER_SOURCE = WORK_HOURS * 3600 // 30  # 1,920
OTHER_RUNS = WORK_HOURS * 60 + 96 + 24  # deliveries, checks, retention: 1,080
RUNS_PER_DAY = 2 * WINDOWS_PER_SOURCE + OTHER_RUNS  # 4,920
TICKS_PER_DAY = 3 * 2880 + 8640  # 17,280
LAUNCHING_TICKS_PER_DAY = RUNS_PER_DAY - 96 - 24  # schedules launch the rest

DAGSTER_TABLES = ("runs", "run_tags", "event_logs", "job_ticks", "asset_event_tags")
OUR_TABLES = {
    "jobmanager": (
        "job_status_updates",
        "processing_failures",
        "processed_source_rows",
        "job_operation_state",
        "job_status_changes",
        "alert_incidents",
    ),
    "logs": ("imposition_operations", "job_operations"),
}


def engine(url: str) -> sa.Engine:
    return sa.create_engine(to_sqlalchemy_url(url), isolation_level="AUTOCOMMIT")


def table_figures(url: str, tables: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """table → (rows, bytes with indexes and TOAST), for the tables that exist."""
    figures = {}
    with engine(url).connect() as conn:
        for table in tables:
            exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": table}).scalar()
            if exists is None:
                continue
            rows = conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar()
            size = conn.execute(sa.text("SELECT pg_total_relation_size(:t)"), {"t": table}).scalar()
            figures[table] = (rows, size)
    return figures


def database_size(url: str, vacuum: bool = True) -> int:
    with engine(url).connect() as conn:
        if vacuum:
            conn.exec_driver_sql("VACUUM ANALYZE")
        return conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()


def mib(n: float) -> float:
    return n / 1024**2


# ----- 1. one steady day ---------------------------------------------------------------------


def growth(before: tuple[int, int], after: tuple[int, int], per: int) -> tuple[float, float]:
    """(rows, bytes) a table gains per ``per``: new rows times the table's average footprint of
    a row (indexes and TOAST included). Not the file growth, which moves in 8 KiB pages and
    counts the dead versions of updated rows that (auto)vacuum makes room of again."""
    rows = (after[0] - before[0]) / per
    return rows, rows * (after[1] / after[0] if after[0] else 0.0)


def measure_day(shop: Shop, instance: dg.DagsterInstance, windows: int) -> dict:
    defs = shop.definitions()
    for source in ("print_os", "scanner"):
        process_source(defs, instance, source, trigger="bench")
    import random

    rng = random.Random(20)
    dagster_before = table_figures(shop.urls.dagster, DAGSTER_TABLES)
    ours_before = {db: table_figures(getattr(shop.urls, db), t) for db, t in OUR_TABLES.items()}
    runs_before = len(instance.get_run_records())
    events = 0
    for _ in range(windows):
        added = simulate_tick(shop.jm, shop.logs, rng)
        events += added["print_events"] + added["scans"]
        for source in ("print_os", "scanner"):
            process_source(defs, instance, source, trigger="bench")
    runs = len(instance.get_run_records()) - runs_before
    dagster_after = table_figures(shop.urls.dagster, DAGSTER_TABLES)
    ours_after = {db: table_figures(getattr(shop.urls, db), t) for db, t in OUR_TABLES.items()}

    per_run = {
        t: growth(dagster_before[t], dagster_after[t], runs)
        for t in dagster_after
        if t != "job_ticks"
    }
    ours_per_window = {
        f"{db}.{t}": growth(ours_before[db][t], ours_after[db][t], windows)
        for db in ours_after
        for t in ours_after[db]
    }
    return {
        "runs": runs,
        "windows": windows,
        "source_rows": events,
        "per_run": per_run,
        "ours_per_window": ours_per_window,
    }


def measure_ticks(instance: dg.DagsterInstance, url: str, count: int) -> tuple[float, float]:
    """(bytes per skipped tick, bytes per launching tick), from ticks made by the instance."""
    templates = make_tick_templates(instance)
    before = table_figures(url, ("job_ticks",))["job_ticks"][1]
    clone_ticks(url, templates["skipped"], count, datetime.now(UTC), 0)
    middle = table_figures(url, ("job_ticks",))["job_ticks"][1]
    clone_ticks(url, templates["success"], count, datetime.now(UTC), 0)
    after = table_figures(url, ("job_ticks",))["job_ticks"][1]
    with engine(url).connect() as conn:
        conn.execute(
            sa.text("DELETE FROM job_ticks WHERE id <> ALL(:keep) AND job_origin_id = :o"),
            {"keep": list(templates.values()), "o": ORIGIN},
        )
    return (middle - before) / count, (after - middle) / count


ORIGIN, SELECTOR = "bench-origin", "bench-selector"


def make_tick_templates(instance: dg.DagsterInstance) -> dict[str, int]:
    """One skipped and one launching tick of a source sensor, as the daemon writes them."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus

    ids = {}
    cursor = (
        '{"marker_seen": 123456, "looked_at": "2026-12-03T10:00:00Z", "requested_up_to": 123456,'
        ' "waiting_runs": 0, "sweep_after": [120000, 118000], "observed": {"marker": 123456,'
        ' "rows_past_marker": 0, "rows_past_marker_counted_up_to": 5000,'
        ' "late_rows_below_marker": 0, "failures_due_for_retry": 0}}'
    )
    for name, status, extra in (
        ("skipped", TickStatus.SKIPPED, {"skip_reason": "nothing past the print_os marker 123456"}),
        (
            "success",
            TickStatus.SUCCESS,
            {"run_ids": ["0f3c1c7e-6a55-4f3a-9d4f-3c2d7c0a1b2e"], "run_keys": ["print_os:1-9#0"]},
        ),
    ):
        tick = instance.create_tick(
            TickData(
                instigator_origin_id=ORIGIN,
                instigator_name="print_os_sensor",
                instigator_type=InstigatorType.SENSOR,
                status=status,
                timestamp=time.time(),
                selector_id=SELECTOR,
                cursor=cursor,
                **extra,
            )
        )
        ids[name] = tick.tick_id
    return ids


def clone_ticks(url: str, template_id: int, count: int, day: datetime, spread: float) -> None:
    with engine(url).connect() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_ticks (job_origin_id, selector_id, status, type, timestamp,"
                " tick_body, create_timestamp, update_timestamp)"
                " SELECT job_origin_id, selector_id, status, type, ts, tick_body, ts, ts"
                " FROM job_ticks t, LATERAL (SELECT CAST(:day AS timestamp)"
                "   + make_interval(secs => g * :spread) AS ts FROM generate_series(1, :n) g) s"
                " WHERE t.id = :template"
            ),
            {
                "day": day.replace(tzinfo=None),
                "spread": spread,
                "n": count,
                "template": template_id,
            },
        )


# ----- 2. a year ----------------------------------------------------------------------------


def clone_runs(url: str, template_run_id: str, count: int, day: datetime, tag: str) -> None:
    """``count`` copies of a finished run (its row, tags and events), stamped ``day``, each
    with its own run id and window tag."""
    params = {"tpl": template_run_id, "n": count, "day": day.replace(tzinfo=None), "tag": tag}
    new_ids = (
        "WITH new AS (SELECT g, CAST(md5(:tag || '-' || g) AS uuid)::text AS rid,"
        " CAST(:day AS timestamp) + make_interval(secs => g * (57600.0 / :n)) AS ts"
        " FROM generate_series(1, :n) g)"
    )
    with engine(url).connect() as conn:
        conn.execute(
            sa.text(
                new_ids + " INSERT INTO runs (run_id, snapshot_id, pipeline_name, mode, status,"
                " run_body, partition, partition_set, create_timestamp, update_timestamp,"
                " start_time, end_time, backfill_id)"
                " SELECT new.rid, snapshot_id, pipeline_name, mode, status,"
                " replace(run_body, :tpl, new.rid), partition, partition_set, new.ts, new.ts,"
                " extract(epoch FROM new.ts), extract(epoch FROM new.ts) + 5, backfill_id"
                " FROM runs r, new WHERE r.run_id = :tpl"
            ),
            params,
        )
        conn.execute(
            sa.text(
                new_ids + " INSERT INTO run_tags (run_id, key, value)"
                " SELECT new.rid, key, CASE WHEN key = :window THEN value || '#' || :tag || g"
                " ELSE value END FROM run_tags t, new WHERE t.run_id = :tpl"
            ),
            {**params, "window": WINDOW_TAG},
        )
        conn.execute(
            sa.text(
                new_ids + " INSERT INTO event_logs (run_id, event, dagster_event_type,"
                " timestamp, step_key, asset_key, partition)"
                " SELECT new.rid, replace(event, :tpl, new.rid), dagster_event_type,"
                " new.ts + (e.timestamp - first.ts), step_key, asset_key, partition"
                " FROM event_logs e, new,"
                "  (SELECT min(timestamp) AS ts FROM event_logs WHERE run_id = :tpl) first"
                " WHERE e.run_id = :tpl"
            ),
            params,
        )


def timed(fn, repeat: int = 5) -> float:
    """Median milliseconds of ``fn``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def query_times(shop: Shop, instance: dg.DagsterInstance) -> dict[str, float]:
    sensor = shop.definitions().resolve_sensor_def("print_os_sensor")

    def tick() -> None:
        resources = {
            "jobmanager": PostgresDatabase(url=shop.urls.jobmanager),
            "processing": ProcessingSettings(),
        }
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            sensor(context)

    return {
        "runs page (25 newest)": timed(lambda: instance.get_run_records(limit=25)),
        "runs page, failed only": timed(
            lambda: instance.get_run_records(
                dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=25
            )
        ),
        "sensor page (25 ticks)": timed(lambda: instance.get_ticks(ORIGIN, SELECTOR, limit=25)),
        "sensor: in-flight runs": timed(
            lambda: instance.get_run_records(
                dg.RunsFilter(tags={SOURCE_TAG: "print_os"}, statuses=IN_FLIGHT)
            )
        ),
        "sensor: finished by window": timed(
            lambda: instance.get_run_records(
                dg.RunsFilter(
                    tags={WINDOW_TAG: ["print_os:1-2", "print_os:2-3"]}, statuses=FINISHED
                )
            )
        ),
        "one print_os sensor tick": timed(tick, repeat=3),
    }


def simulate_year(
    shop: Shop,
    instance: dg.DagsterInstance,
    template_run_id: str,
    runs_per_day: int,
    ticks_per_day: int,
    days: int,
    policy: RetentionPolicy | None,
    checkpoints: set[int],
    start: datetime,
    label: str,
) -> list[list[object]]:
    url = shop.urls.dagster
    templates = make_tick_templates(instance)
    launching = round(ticks_per_day * LAUNCHING_TICKS_PER_DAY / TICKS_PER_DAY)
    rows = []
    for day in range(1, days + 1):
        midnight = start + timedelta(days=day)
        began = time.perf_counter()
        clone_runs(url, template_run_id, runs_per_day, midnight, f"{label}{day}")
        clone_ticks(url, templates["success"], launching, midnight, 86400 / max(launching, 1))
        clone_ticks(
            url, templates["skipped"], ticks_per_day - launching, midnight, 86400 / ticks_per_day
        )
        cloned = time.perf_counter()
        if policy is not None:
            now = midnight + timedelta(days=1)
            pruned = prune_runs(instance, policy, now=now)
            purge_ticks(instance, now)
            assert pruned.deleted < policy.max_deletions_per_run
            if day % 30 == 0:
                log(
                    f"{label} day {day}: cloned in {cloned - began:.1f} s, deleted"
                    f" {pruned.deleted} runs in {time.perf_counter() - cloned:.1f} s"
                )
        if day in checkpoints:
            size = database_size(url)
            figures = table_figures(url, DAGSTER_TABLES)
            times = query_times(shop, instance)
            rows.append(
                [
                    label,
                    day,
                    figures["runs"][0],
                    figures["event_logs"][0],
                    figures["job_ticks"][0],
                    mib(size),
                    *times.values(),
                ]
            )
            log(f"{label} day {day}: {mib(size):.0f} MiB, {figures['runs'][0]} runs, {times}")
    return rows


def purge_ticks(instance: dg.DagsterInstance, now: datetime) -> None:
    """What the sensor daemon does with dagster.yaml's retention (days per tick status)."""
    from dagster._core.definitions.run_request import InstigatorType

    for status, days in instance.get_tick_retention_settings(InstigatorType.SENSOR).items():
        if days > 0:
            before = (now - timedelta(days=days)).timestamp()
            instance.purge_ticks(ORIGIN, SELECTOR, before=before, tick_statuses=[status])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=30, help="measured windows per source")
    parser.add_argument("--scale", type=float, default=0.05, help="fraction of a day's runs")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--retention-days", type=int, default=30)
    parser.add_argument(
        "--steady-days",
        type=int,
        default=30,
        help="then this many days of full-scale runs, as retention keeps them (0: skip)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database folder")
    args = parser.parse_args()

    print(f"machine: {machine_line()}")
    folder = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        run(args, folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def run(args: argparse.Namespace, folder: Path) -> None:
    with embedded_server(folder) as server:
        urls = server.migrated("storage")
        with (
            dg.instance_for_test(
                temp_dir=tempfile.mkdtemp(), overrides=instance_overrides(urls.dagster)
            ) as instance,
            Shop(urls) as shop,
        ):
            log("demo shop")
            generate_shop(shop.jm, shop.logs, scale=1)
            log(f"measuring {args.windows} windows per source")
            day = measure_day(shop, instance, args.windows)
            skipped_tick, launching_tick = measure_ticks(instance, urls.dagster, 2000)
            report_day(day, skipped_tick, launching_tick)

            template = instance.get_run_records(
                dg.RunsFilter(
                    tags={SOURCE_TAG: "print_os"}, statuses=[dg.DagsterRunStatus.SUCCESS]
                ),
                limit=1,
            )[0].dagster_run.run_id
            runs_per_day = max(1, round(RUNS_PER_DAY * args.scale))
            ticks_per_day = max(2, round(TICKS_PER_DAY * args.scale))
            start = datetime.now(UTC) - timedelta(days=2 * args.days + 2)
            checkpoints = {
                1,
                args.retention_days,
                2 * args.retention_days,
                args.days // 2,
                args.days,
            }
            log(f"a year under retention: {runs_per_day} runs and {ticks_per_day} ticks a day")
            policy = RetentionPolicy(
                run_retention_days=args.retention_days,
                failed_run_retention_days=180,
                max_deletions_per_run=10**9,
            )
            rows = simulate_year(
                shop,
                instance,
                template,
                runs_per_day,
                ticks_per_day,
                args.days,
                policy,
                checkpoints,
                start,
                "retention",
            )
            log("the same year again, nothing pruned")
            rows += simulate_year(
                shop,
                instance,
                template,
                runs_per_day,
                ticks_per_day,
                args.days,
                None,
                {args.days // 2, args.days},
                start + timedelta(days=args.days),
                "none",
            )
            if args.steady_days:
                log(f"what retention leaves at full scale: {args.steady_days} days of runs")
                rows += simulate_year(
                    shop,
                    instance,
                    template,
                    RUNS_PER_DAY,
                    LAUNCHING_TICKS_PER_DAY,
                    args.steady_days,
                    None,
                    {args.steady_days},
                    start + timedelta(days=2 * args.days),
                    "full scale, kept",
                )
            header = [
                "retention",
                "day",
                "runs",
                "events",
                "ticks",
                "dagster MiB",
                *query_times(shop, instance).keys(),
            ]
            print(
                f"\nA year at {args.scale:g} of a day's runs ({runs_per_day} runs and"
                f" {ticks_per_day} ticks a day, retention {args.retention_days} days);"
                " query times are medians in ms"
            )
            print_table("a year of runs", header, rows)


def report_day(day: dict, skipped_tick: float, launching_tick: float) -> None:
    runs = day["runs"]
    rows = []
    total = 0.0
    for table, (row_count, size) in day["per_run"].items():
        per_day = size * RUNS_PER_DAY
        total += per_day
        rows.append([table, row_count, size, row_count * RUNS_PER_DAY, mib(per_day)])
    ticks = (TICKS_PER_DAY - LAUNCHING_TICKS_PER_DAY) * skipped_tick
    ticks += LAUNCHING_TICKS_PER_DAY * launching_tick
    total += ticks
    rows.append(["job_ticks", "", "", TICKS_PER_DAY, mib(ticks)])
    rows.append(["total dagster", "", "", "", mib(total)])
    print_table(
        f"dagster database: one steady day ({RUNS_PER_DAY:,} runs, {TICKS_PER_DAY:,} ticks;"
        f" per run from {runs} real runs)",
        ["table", "rows per run", "bytes per run", "rows per day", "MiB per day"],
        rows,
    )
    ours = []
    total = 0.0
    for table, (row_count, size) in day["ours_per_window"].items():
        per_day = size * WINDOWS_PER_SOURCE
        total += per_day
        ours.append([table, row_count, size, mib(per_day)])
    ours.append(["total ours", "", "", mib(total)])
    print_table(
        f"our tables: one steady day ({WINDOWS_PER_SOURCE:,} windows per source of a live shop;"
        f" {day['source_rows'] / day['windows']:.1f} source rows per window)",
        ["table", "rows per window", "bytes per window", "MiB per day"],
        ours,
    )


if __name__ == "__main__":
    main()
