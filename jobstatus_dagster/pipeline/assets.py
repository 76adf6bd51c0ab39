"""The asset graph the data team sees: the shop's source tables → our processing → the tables
we write. Source and target tables are external specs; the processing assets are the
materializable, marker-range-partitioned graphs the sensors and backfills run."""

import dagster as dg

from jobstatus_dagster import source
from jobstatus_dagster.source import SOURCES, Source

PRINT_OS_TABLE = dg.AssetKey(list(source.PRINT_OS_TABLE))
SCANNED_CODES = dg.AssetKey(list(source.SCANNED_CODES))
FILE_MAPPING = dg.AssetKey(list(source.FILE_MAPPING))
PLANNER_PATHS = dg.AssetKey(list(source.PLANNER_PATHS))
OPERATION_CODES = dg.AssetKey(list(source.OPERATION_CODES))

IMPOSITION_OPERATIONS = dg.AssetKey(["logs", "imposition_operations"])
JOB_OPERATIONS = dg.AssetKey(["logs", "job_operations"])
JOBS_OPERATIONS = dg.AssetKey(["jobmanager", "jobs_operations"])
JOB_STATUS_UPDATES = dg.AssetKey(["jobmanager", "job_status_updates"])
PROCESSING_FAILURES = dg.AssetKey(["jobmanager", "processing_failures"])
MARKERS = dg.AssetKey(["jobmanager", "processing_markers"])


# Who answers for the tables we write (shown on each asset's page; Dagster's owner format).
OWNERS = ["team:jobstatus"]


def _columns(*columns: tuple[str, str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, type_, description=text) for name, type_, text in columns]
    )


_TRACKING = (
    ("status", "varchar", "completed | partial | aborted (R11, R13)"),
    ("completed_at", "timestamp", "the event's own time (R14), never the run's"),
    ("completed_by", "varchar", "print_os | scanner"),
    ("source_id", "bigint", '"print OS".id or scanned_codes.scan_id'),
    ("notes", "text", "why: counts, precedence, withdrawals"),
)

# Dagster's table conventions (dagster/table_name, dagster/column_schema): where each asset
# lives in Postgres and the columns we write in it (the shop's tables: only the columns we add).
TABLES: dict[dg.AssetKey, tuple[str, dg.TableSchema | None]] = {
    PRINT_OS_TABLE: ('jobmanager.public."print OS"', None),
    SCANNED_CODES: ("jobmanager.public.scanned_codes", None),
    FILE_MAPPING: ("logs.public.imposition_file_mapping", None),
    PLANNER_PATHS: ("logs.public.production_planner_paths", None),
    OPERATION_CODES: ("logs.public.operation_codes", None),
    IMPOSITION_OPERATIONS: (
        "logs.public.imposition_operations",
        _columns(("imposition_id", "text", "key"), ("operation_id", "text", "key"), *_TRACKING),
    ),
    JOB_OPERATIONS: (
        "logs.public.job_operations",
        _columns(
            ("job_id", "text", "key"),
            ("version_tag", "text", "key"),
            ("operation_id", "text", "key"),
            *_TRACKING,
        ),
    ),
    JOBS_OPERATIONS: (
        "jobmanager.public.jobs",
        _columns(
            ("job_id", "text", "key"),
            ("operations", "jsonb", "operation name → true/false; print per R12"),
        ),
    ),
    JOB_STATUS_UPDATES: (
        "jobmanager.public.job_status_updates",
        _columns(
            ("update_id", "bigint", "gap-free order of the audit"),
            ("source_type", "varchar", "print_os | scanner"),
            ("source_id", "bigint", "the source row"),
            ("job_id", "text", ""),
            ("version_tag", "text", ""),
            ("operation", "text", ""),
            ("status", "text", ""),
            ("printed_count", "integer", "R11"),
            ("aborted_count", "integer", "R11"),
            ("total_count", "integer", "R11"),
            ("applied", "boolean", "whether it won (R15)"),
            ("notes", "text", ""),
            ("event_time", "timestamp", "R14"),
            ("processed_at", "timestamp", "when we wrote it"),
            ("run_id", "text", "the Dagster run"),
            ("withdrawn_at", "timestamp", "R22b: no remaining event supports it"),
        ),
    ),
    PROCESSING_FAILURES: (
        "jobmanager.public.processing_failures",
        _columns(
            ("failure_id", "bigint", ""),
            ("source_type", "varchar", ""),
            ("source_id", "bigint", ""),
            ("reason", "text", "R20"),
            ("subject", "text", "what could not be applied"),
            ("detail", "text", ""),
            ("retryable", "boolean", "retried on later runs"),
            ("attempts", "integer", ""),
            ("first_attempt_at", "timestamp", ""),
            ("last_attempt_at", "timestamp", ""),
            ("resolved_at", "timestamp", "recorded, never deleted"),
        ),
    ),
    MARKERS: (
        "jobmanager.public.processing_markers",
        _columns(
            ("marker_type", "varchar", "print_os | scanned_codes"),
            ("last_processed_id", "bigint", "R3, R18"),
            ("updated_at", "timestamp", ""),
        ),
    ),
}


def table_metadata(key: dg.AssetKey) -> dict[str, object]:
    from dagster._core.definitions.metadata.metadata_set import TableMetadataSet

    table_name, schema = TABLES[key]
    return dict(TableMetadataSet(table_name=table_name, column_schema=schema))


def _table_specs(
    group: str,
    descriptions: dict[dg.AssetKey, str],
    deps: list[dg.AssetKey] | None = None,
    owners: list[str] | None = None,
) -> list[dg.AssetSpec]:
    """Postgres tables as external assets of one group (nothing materializes them but runs)."""
    return [
        dg.AssetSpec(
            key,
            description=text,
            deps=deps,
            group_name=group,
            kinds={"postgres"},
            metadata=table_metadata(key),
            owners=owners,
        )
        for key, text in descriptions.items()
    ]


SOURCE_SPECS = _table_specs(
    "shop_sources",
    {
        PRINT_OS_TABLE: '"print OS": PrintOS writes every printed or aborted imposition.',
        SCANNED_CODES: "Barcode scans from the finishing machines.",
        FILE_MAPPING: "imposition_id → file ids; a file id names a job version.",
        PLANNER_PATHS: "runlist_id → imposition ids.",
        OPERATION_CODES: "operation name → operation_id, edited by the shop.",
    },
)

TARGET_SPECS = _table_specs(
    "job_status",
    {
        IMPOSITION_OPERATIONS: "Per imposition and operation: status, when, by which machine,"
        " from which source row.",
        JOB_OPERATIONS: "Per job version and operation: status, with printed/aborted counts in"
        " the notes.",
        JOBS_OPERATIONS: "jobs.operations: the current status of each operation of a job"
        " (print, coating, kiss_cut, …).",
        JOB_STATUS_UPDATES: "The audit trail: one row per source row, job version and operation.",
        PROCESSING_FAILURES: "Rows that could not be applied, and whether they are retried.",
        MARKERS: "How far each source has been processed.",
    },
    deps=[each.processing_key for each in SOURCES],
    owners=OWNERS,
)


def processing_ins(source: Source) -> dict[str, dg.AssetIn]:
    """Lineage-only inputs (the tables a source's processing reads): nothing is loaded through
    an IO manager."""
    return {
        name: dg.AssetIn(key=key, dagster_type=dg.Nothing) for name, key in source.lineage.items()
    }
