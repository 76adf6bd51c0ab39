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


def _table_specs(
    group: str, descriptions: dict[dg.AssetKey, str], deps: list[dg.AssetKey] | None = None
) -> list[dg.AssetSpec]:
    """Postgres tables as external assets of one group (nothing materializes them but runs)."""
    return [
        dg.AssetSpec(key, description=text, deps=deps, group_name=group, kinds={"postgres"})
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
)


def processing_ins(source: Source) -> dict[str, dg.AssetIn]:
    """Lineage-only inputs (the tables a source's processing reads): nothing is loaded through
    an IO manager."""
    return {
        name: dg.AssetIn(key=key, dagster_type=dg.Nothing) for name, key in source.lineage.items()
    }
