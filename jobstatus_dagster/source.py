"""The two sources, each described once: its table and columns (for io/), its marker row, and
the names of everything Dagster builds for it (asset, partitions, job, ops, sensor).

Dagster is imported only where a Dagster object is built, so the CLI reads the names without
paying for Dagster's import.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

# The source_type of audit, failure and processed rows, and the run tag of each source's runs.
PRINT_OS = "print_os"
SCANNER = "scanner"

AssetPath = tuple[str, ...]  # an asset key's path: (database, table)

# The shop's tables, as assets of the graph the data team sees.
PRINT_OS_TABLE: AssetPath = ("jobmanager", "print_os")
SCANNED_CODES: AssetPath = ("jobmanager", "scanned_codes")
FILE_MAPPING: AssetPath = ("logs", "imposition_file_mapping")
PLANNER_PATHS: AssetPath = ("logs", "production_planner_paths")
OPERATION_CODES: AssetPath = ("logs", "operation_codes")


@dataclass(frozen=True)
class Source:
    """One source table and what processing it means; every per-source name is derived here."""

    name: str  # the source_type of audit, failure and processed rows
    table_name: str  # the shop's name of the table, composed as a quoted identifier
    id_column: str  # the audit's source_id
    marker_column: str  # windows are ranges of it (R18)
    # processing_markers.marker_type: 'scanned_codes' for the scanner, as the shop's plan fixes
    # it and the shop reads it; so not derived from the name.
    marker_type: str
    event_time_columns: tuple[str, ...]  # R14: the row's own time, first one set wins
    row_columns: tuple[tuple[str, str], ...]  # (expression over the row, column name)
    table_path: AssetPath
    reads: tuple[AssetPath, ...]  # other tables its resolution reads (lineage)
    rows_label: str  # what its rows are, in the shop's words (sensor and job descriptions)
    kind: str  # the stem of its resolve and compute ops: resolve_<kind>_window, …

    @property
    def table(self) -> str:
        """The table name quoted, for SQL text (io/ composes ``table_name`` instead)."""
        return '"' + self.table_name.replace('"', '""') + '"'

    @property
    def graph_name(self) -> str:
        """The processing asset's key and graph node name, the first level of its run config."""
        return f"{self.name}_processing"

    @property
    def partitions_name(self) -> str:
        return f"{self.name}_marker_ranges"

    @property
    def processing_key(self) -> dg.AssetKey:
        import dagster as dg

        return dg.AssetKey(self.graph_name)

    @cached_property
    def partitions(self) -> dg.DynamicPartitionsDefinition:
        """Marker ranges the sensor adds as it goes and the data team backfills (R21)."""
        import dagster as dg

        return dg.DynamicPartitionsDefinition(name=self.partitions_name)

    @property
    def job_name(self) -> str:
        return f"process_{self.name}"

    @property
    def load_op_name(self) -> str:
        return f"load_{self.name}_window"

    @property
    def resolve_op_name(self) -> str:
        return f"resolve_{self.kind}_window"

    @property
    def compute_op_name(self) -> str:
        return f"compute_{self.kind}_updates"

    @property
    def sensor_name(self) -> str:
        return f"{self.name}_sensor"

    @property
    def lineage(self) -> dict[str, dg.AssetKey]:
        """Input name → table, for the processing asset's lineage-only inputs."""
        import dagster as dg

        return {path[-1]: dg.AssetKey(list(path)) for path in (self.table_path, *self.reads)}

    def window_run_config(self, from_marker: int, to_marker: int) -> dict:
        """Run config of the processing job for the window (from_marker, to_marker]."""
        config = {"from_marker": from_marker, "to_marker": to_marker}
        return {"ops": {self.graph_name: {"ops": {self.load_op_name: {"config": config}}}}}


PRINT_OS_SOURCE = Source(
    name=PRINT_OS,
    table_name="print OS",
    id_column="id",
    marker_column="marker",
    marker_type="print_os",
    event_time_columns=("job_complete_time", "created_at"),
    row_columns=(("name", "imposition_id"), ("status", "status")),
    table_path=PRINT_OS_TABLE,
    reads=(FILE_MAPPING, OPERATION_CODES),
    rows_label="print events",
    kind="print",
)
SCANNER_SOURCE = Source(
    name=SCANNER,
    table_name="scanned_codes",
    id_column="scan_id",
    marker_column="scan_id",
    marker_type="scanned_codes",
    event_time_columns=("scanned_at",),
    row_columns=(
        ("code_text", "code_text"),
        ("operations::text", "operations_json"),
        ("machine_id", "machine_id"),
    ),
    table_path=SCANNED_CODES,
    reads=(FILE_MAPPING, PLANNER_PATHS, OPERATION_CODES, PRINT_OS_TABLE),
    rows_label="barcode scans",
    kind="scan",
)

SOURCES = (PRINT_OS_SOURCE, SCANNER_SOURCE)
SOURCE_NAMES = tuple(source.name for source in SOURCES)
_BY_NAME = {source.name: source for source in SOURCES}


def source_named(name: str) -> Source:
    """The source of a source_type, as runs, tags and the CLI name it."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; one of {', '.join(SOURCE_NAMES)}") from None
