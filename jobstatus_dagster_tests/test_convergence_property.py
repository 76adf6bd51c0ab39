"""R22–R24 as a property: random small shops, sometimes hostile (long identifiers, padded ids,
`jobs.operations` that is not an object, `Print` spelled so), and random schedules (windows,
out-of-order commits, re-runs of windows below processed rows, backfills, stale plans writing
after newer ones, crashes, reference corrections, the shop deleting, correcting, overwriting or
re-adding rows). After every step the state equals one from-scratch run over the rows processed
so far, made on a second database pair (R22a; exempt until a backfill after the shop changed
data, R22b), the read surfaces agree with the state tables, and no run raises (R20); at the end
the state equals a from-scratch run over all data and re-running changes nothing. And at every
step, folding the change feed, and separately one subscriber's deliveries, keeping the last
change per (job, version, operation) gives the state (R25). A small budget
here; `make faults` scenario 9 runs a large one (jobstatus_testkit/convergence.py)."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_testkit.convergence import (
    END_STATE,
    FOLD,
    RAISED,
    STEP_STATE,
    Env,
    check_schedule,
    defect_class,
    open_env,
    schedules,
    shops,
)
from jobstatus_testkit.databases import Server

EXAMPLES = int(os.environ.get("JOBSTATUS_CONVERGENCE_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def env(urls: DatabaseUrls) -> Iterator[Env]:
    with open_env(urls) as opened:
        yield opened


@pytest.fixture(scope="module")
def reference(pg_server: Server) -> Iterator[Env]:
    """A second migrated database pair: the from-scratch run each step is compared with."""
    with open_env(pg_server.migrated("reference"), reference=True) as opened:
        yield opened


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_r22_state_is_a_function_of_the_data_whatever_the_schedule(
    env: Env, reference: Env, data
) -> None:
    shop = data.draw(shops())
    steps = data.draw(schedules(shop))
    problems = check_schedule(env, reference, shop, steps)
    report = "\n".join(problems[:40])
    # One line per defect class, so Hypothesis reports one falsifying example for each it finds.
    kind = defect_class(problems)
    if kind == RAISED:
        raise AssertionError(f"a run raised (R20):\n{report}")
    if kind == STEP_STATE:
        raise AssertionError(f"the state after a step is not a from-scratch run's (R22):\n{report}")
    if kind == END_STATE:
        raise AssertionError(f"the final state is not a from-scratch run's (R22):\n{report}")
    if kind == FOLD:
        raise AssertionError(f"folding the change stream does not give the state (R25):\n{report}")
    assert not problems, f"the read surfaces disagree with the state tables (R4, R8):\n{report}"
