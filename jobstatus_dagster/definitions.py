"""The code location: read top to bottom as a table of contents."""

import dagster as dg

from jobstatus_dagster.config import load_settings
from jobstatus_dagster.core.plan import PRINT_OS, SCANNER
from jobstatus_dagster.pipeline.print_os import process_print_os
from jobstatus_dagster.pipeline.resources import PostgresDatabase, ProcessingSettings
from jobstatus_dagster.pipeline.scanner import process_scanner
from jobstatus_dagster.pipeline.sensors import build_source_sensor


def build_definitions(
    jobmanager_url: str | dg.EnvVar,
    logs_url: str | dg.EnvVar,
    print_os_interval_seconds: int = 30,
    scanner_interval_seconds: int = 30,
    processing: ProcessingSettings | None = None,
) -> dg.Definitions:
    return dg.Definitions(
        jobs=[process_print_os, process_scanner],
        sensors=[
            build_source_sensor(PRINT_OS, process_print_os, print_os_interval_seconds),
            build_source_sensor(SCANNER, process_scanner, scanner_interval_seconds),
        ],
        resources={
            "jobmanager": PostgresDatabase(url=jobmanager_url),
            "logs": PostgresDatabase(url=logs_url),
            "processing": processing or ProcessingSettings(),
            # In-process executor: frames stay in memory, nothing pickled per op.
            "io_manager": dg.mem_io_manager,
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings = load_settings()
    return build_definitions(
        dg.EnvVar("JOBSTATUS_JOBMANAGER_URL"),
        dg.EnvVar("JOBSTATUS_LOGS_URL"),
        settings.sensor_interval_seconds,
        settings.scanner_interval_seconds or settings.sensor_interval_seconds,
    )
