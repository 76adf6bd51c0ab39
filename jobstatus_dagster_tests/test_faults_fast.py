"""The fast subset of the fault suite (faults/, `make faults`): a kill at two stages, concurrent
processors, out-of-order commits; on the demo shop at scale 1, against the session's server."""

import pytest

from faults.harness import Cluster, Result
from faults.scenarios import (
    Suite,
    concurrent_processors,
    kill_at_each_stage,
    out_of_order_commits,
)


@pytest.fixture(scope="module")
def suite(pg_admin_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return Suite(Cluster(tmp_path_factory.mktemp("faults"), pg_admin_uri), quick=True)


def assert_exactly_once(result: Result) -> None:
    notes = "\n".join(result.notes)
    assert result.rows_in > 0 and result.applied == result.rows_in, notes
    assert result.duplicates == 0, notes
    assert result.lost == 0, notes
    assert result.equal is True, notes


def test_r18_kill_inside_and_after_the_commits_then_rerun(suite: Suite) -> None:
    result = kill_at_each_stage(suite, points=("before_jobmanager_commit",), sources=("print_os",))
    assert result.kills == 2, result.notes
    assert_exactly_once(result)


def test_r19_concurrent_processors_serialize_to_the_undisturbed_state(suite: Suite) -> None:
    result = concurrent_processors(suite, processes=2, with_api=False)
    assert_exactly_once(result)


def test_r19_rows_committed_out_of_order_are_processed_exactly_once(suite: Suite) -> None:
    result = out_of_order_commits(suite, seconds=8, writers=3, in_process=True)
    assert_exactly_once(result)
