"""Data-quality checks a data team wants on these tables, run every 15 minutes and on demand.

One is ERROR and blocking (the print flag the shop reads disagrees with the print rows): it
fails its run and pages. The others are WARN: what they watch is either paged already by the
alerts sensor's own source thresholds (marker lag, failure age: looked at every 30 s, with
hysteresis) or the shop's own data, recorded as failures (file ids)."""

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from jobstatus_dagster.core.identifiers import file_id_sql_patterns
from jobstatus_dagster.core.plan import NOT_DATA_QUALITY_REASONS
from jobstatus_dagster.io.compose import Identifier, composed, trimmed
from jobstatus_dagster.io.sources import load_operation_codes, rows_past_marker
from jobstatus_dagster.pipeline.assets import (
    FILE_MAPPING,
    JOBS_OPERATIONS,
    MARKERS,
    PROCESSING_FAILURES,
)
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.source import SOURCES

CHECK_TAG = "jobstatus/checks"


# R20: failures are recorded and retried; another customer's file ids are not data quality.
@dg.asset_check(
    asset=PROCESSING_FAILURES,
    description="Rows that could not be applied (no files mapped, unknown code, missing job, …) "
    "still unresolved after JOBSTATUS_FAILURE_AGE_HOURS; another customer's file ids are "
    "recorded but are not data-quality failures.",
)
def unresolved_failures_are_recent(
    jobmanager: PostgresDatabase, processing: ProcessingSettings
) -> dg.AssetCheckResult:
    hours = processing.resolved().failure_age_hours
    with jobmanager.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source_type, reason, count(*) AS n, min(first_attempt_at) AS oldest"
                " FROM processing_failures WHERE resolved_at IS NULL"
                " AND reason <> ALL(:not_data_quality)"
                " AND first_attempt_at < now() - make_interval(secs => CAST(:hours AS double precision) * 3600)"
                " GROUP BY source_type, reason ORDER BY n DESC"
            ),
            {"hours": hours, "not_data_quality": sorted(NOT_DATA_QUALITY_REASONS)},
        ).all()
    total = sum(r.n for r in rows)
    return dg.AssetCheckResult(
        passed=total == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "older_than_hours": hours,
            "unresolved": total,
            "by_reason": {f"{r.source_type}/{r.reason}": r.n for r in rows},
            "oldest": str(min((r.oldest for r in rows), default="")),
        },
    )


# R4 (the file id pattern, trimmed) and R20 (other customers' ids are not ours).
@dg.asset_check(
    asset=FILE_MAPPING,
    description="File ids that do not match FILE_<version>_<customer>_<job_id>[_<extra>] once "
    "surrounding spaces are trimmed; another customer's well-formed ids are counted apart and "
    "pass.",
)
def file_ids_match_the_pattern(
    logs: PostgresDatabase, processing: ProcessingSettings
) -> dg.AssetCheckResult:
    customer = processing.resolved().file_customer
    ours, anyone = file_id_sql_patterns(customer)
    # Same classification as identifiers.classify_file_ids: a token equal to ours but for case
    # is malformed, not foreign.
    with logs.engine.connect() as conn:
        count, sample, foreign = conn.execute(
            composed(
                "SELECT count(*) FILTER (WHERE NOT ok), (array_agg(f ORDER BY id DESC)"
                " FILTER (WHERE NOT ok))[1:10], count(*) FILTER (WHERE ok AND NOT mine)"
                " FROM (SELECT id, f, f ~ :ours AS mine, f ~ :ours OR (f ~ :anyone"
                "   AND lower(substring(f from '^FILE_[^_]+_([^_]+)_')) <> lower(:customer)) AS ok"
                "   FROM (SELECT id, {file_id} AS f FROM imposition_file_mapping) m) c",
                file_id=trimmed(Identifier("file_id")),
            ),
            {"ours": ours, "anyone": anyone, "customer": customer},
        ).one()
    return dg.AssetCheckResult(
        passed=count == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "non_matching": count,
            "sample": ", ".join(sample or []),
            "other_customers": foreign,
        },
    )


@dg.asset_check(
    asset=MARKERS,
    description="Rows past each source's marker: more than JOBSTATUS_MAX_MARKER_LAG means "
    "processing is falling behind or stuck.",
)
def markers_keep_up(
    jobmanager: PostgresDatabase, processing: ProcessingSettings
) -> dg.AssetCheckResult:
    limit = processing.resolved().max_marker_lag
    lag = {}
    with jobmanager.engine.connect() as conn:
        for src in SOURCES:
            lag[src.name] = rows_past_marker(conn, src.name, limit + 1)
    return dg.AssetCheckResult(
        passed=all(v <= limit for v in lag.values()),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"max_rows_behind": limit, **{f"{k}_rows_behind": v for k, v in lag.items()}},
    )


# R12: the print flag is true only for a completed highest version. The one ERROR check, and
# blocking: what the shop reads is wrong, so it pages (docs/decisions.md, "Which checks page").
@dg.asset_check(
    asset=JOBS_OPERATIONS,
    blocking=True,
    description="jobs.operations.print agrees with the job's print state and its job_operations "
    "print row: true exactly when every file of the job's highest version has printed. ERROR and "
    "blocking: a failure fails its run and opens an alert incident until it passes again.",
)
def print_flag_agrees_with_job_operations(
    jobmanager: PostgresDatabase, logs: PostgresDatabase
) -> dg.AssetCheckResult:
    with jobmanager.engine.connect() as conn:
        states = pd.read_sql(
            sa.text(
                # R12: whichever source established it; R4: the shop's job ids trimmed; a
                # jobs.operations that is not an object holds no flag (R20: left as it was).
                "SELECT s.job_id, s.version_tag, s.value, CASE WHEN jsonb_typeof(j.operations)"
                " = 'object' THEN (j.operations ->> 'print')::boolean END AS flag"
                " FROM job_operation_state s"
                " JOIN jobs j ON btrim(j.job_id, E' \\t\\n\\r') = s.job_id"
                " WHERE s.operation = 'print'"
            ),
            conn,
        )
    with logs.engine.connect() as conn:
        # R8: the print code as the writer reads it (names normalised, codes trimmed).
        codes = load_operation_codes(conn)
        print_ids = codes.loc[codes["operation"] == "print", "operation_id"].dropna().tolist()
        rows = pd.read_sql(
            sa.text(
                "SELECT btrim(o.job_id, E' \\t\\n\\r') AS job_id,"
                " btrim(o.version_tag, E' \\t\\n\\r') AS version_tag, o.status"
                " FROM job_operations o"
                " WHERE btrim(o.operation_id, E' \\t\\n\\r') = ANY(:codes)"
                " AND btrim(o.job_id, E' \\t\\n\\r') = ANY(:jobs)"
            ),
            conn,
            params={"codes": print_ids, "jobs": states["job_id"].unique().tolist()},
        )
    merged = states.merge(rows, on=["job_id", "version_tag"], how="left")
    flag_differs = merged["flag"].fillna(False) != merged["value"]
    has_row = merged["status"].notna()
    row_differs = has_row & ((merged["status"] == "completed") != merged["value"])
    bad = merged[flag_differs | row_differs]
    return dg.AssetCheckResult(
        passed=bad.empty,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "jobs_checked": len(merged),
            "disagreeing": len(bad),
            "sample": ", ".join(bad["job_id"].head(10)),
        },
    )


CHECKS = [
    unresolved_failures_are_recent,
    file_ids_match_the_pattern,
    markers_keep_up,
    print_flag_agrees_with_job_operations,
]

checks_job = dg.define_asset_job(
    "data_quality_checks",
    selection=dg.AssetSelection.checks(*CHECKS),
    executor_def=dg.in_process_executor,
    tags={CHECK_TAG: "scheduled"},
    description="Every data-quality check on the job-status tables.",
)

checks_schedule = dg.ScheduleDefinition(
    name="data_quality_every_15_minutes",
    job=checks_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
