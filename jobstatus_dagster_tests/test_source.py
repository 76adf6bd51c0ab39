"""The per-source descriptions: names Dagster and the shop see, and their lookup. Pure."""

import pytest

from jobstatus_dagster.core.plan import PRINT_OS, SCANNER
from jobstatus_dagster.definitions import build_definitions
from jobstatus_dagster.source import (
    PRINT_OS_SOURCE,
    SCANNER_SOURCE,
    SOURCE_NAMES,
    SOURCES,
    source_named,
)


def test_r18_marker_types_are_the_shops_values() -> None:
    # The shop reads processing_markers: its plan fixes these two values.
    assert PRINT_OS_SOURCE.marker_type == "print_os"
    assert SCANNER_SOURCE.marker_type == "scanned_codes"


def test_r21_partitions_are_marker_ranges_of_each_source() -> None:
    assert [source.partitions.name for source in SOURCES] == [
        "print_os_marker_ranges",
        "scanner_marker_ranges",
    ]


def test_lookup_by_source_type() -> None:
    assert SOURCE_NAMES == (PRINT_OS, SCANNER)
    assert source_named(SCANNER) is SCANNER_SOURCE
    with pytest.raises(ValueError, match="unknown source 'scanned_codes'"):
        source_named("scanned_codes")


def test_definitions_are_built_from_the_descriptions() -> None:
    defs = build_definitions("postgresql://x/jobmanager", "postgresql://x/logs")
    graph = defs.resolve_asset_graph()
    for source in SOURCES:
        job = defs.resolve_job_def(source.job_name)
        assert job.tags["jobstatus/source"] == source.name
        assert source.load_op_name in {
            node.name for node in job.graph.node_dict[source.graph_name].definition.nodes
        }
        node = graph.get(source.processing_key)
        assert node.partitions_def == source.partitions
        assert set(source.lineage.values()) == node.parent_keys
        defs.resolve_sensor_def(source.sensor_name)
