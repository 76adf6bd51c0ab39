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

SOURCE_SPECS = [
    dg.AssetSpec(
        PRINT_OS_TABLE,
        description='"print OS": PrintOS writes every printed or aborted imposition.',
        group_name="shop_sources",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        SCANNED_CODES,
        description="Barcode scans from the finishing machines.",
        group_name="shop_sources",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        FILE_MAPPING,
        description="imposition_id → file ids (file ids name job versions, R4).",
        group_name="shop_sources",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        PLANNER_PATHS,
        description="runlist_id → imposition ids.",
        group_name="shop_sources",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        OPERATION_CODES,
        description="operation name → operation_id (R8), edited by the shop.",
        group_name="shop_sources",
        kinds={"postgres"},
    ),
]

_BOTH = [each.processing_key for each in SOURCES]
TARGET_SPECS = [
    dg.AssetSpec(
        IMPOSITION_OPERATIONS,
        deps=_BOTH,
        description="Per imposition and operation: status, completed_at/by, source (R13–R15).",
        group_name="job_status",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        JOB_OPERATIONS,
        deps=_BOTH,
        description="Per job version and operation: status with counts in notes (R11–R15).",
        group_name="job_status",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        JOBS_OPERATIONS,
        deps=_BOTH,
        description="jobs.operations JSONB: {print, coating, kiss_cut, …} (R12, R15).",
        group_name="job_status",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        JOB_STATUS_UPDATES,
        deps=_BOTH,
        description="The audit trail, one row per (source, job version, operation) (R17).",
        group_name="job_status",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        PROCESSING_FAILURES,
        deps=_BOTH,
        description="What could not be applied, retryable or not (R20).",
        group_name="job_status",
        kinds={"postgres"},
    ),
    dg.AssetSpec(
        MARKERS,
        deps=_BOTH,
        description="How far each source has been processed (R18).",
        group_name="job_status",
        kinds={"postgres"},
    ),
]


def processing_ins(source: Source) -> dict[str, dg.AssetIn]:
    """Lineage-only inputs (the tables a source's processing reads): nothing is loaded through
    an IO manager."""
    return {
        name: dg.AssetIn(key=key, dagster_type=dg.Nothing) for name, key in source.lineage.items()
    }
