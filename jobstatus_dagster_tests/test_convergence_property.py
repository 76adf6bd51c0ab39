"""R22–R24 as a property: random small shops, random schedules (windows, out-of-order commits,
backfills, stale plans writing after newer ones, crashes, reference corrections); the state
always ends equal to a from-scratch run and re-running changes nothing. A small budget here;
`make faults` scenario 9 runs a large one."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobstatus_dagster.db import DatabaseUrls
from jobstatus_testkit.convergence import Env, check_schedule, open_env, schedules, shops

EXAMPLES = int(os.environ.get("JOBSTATUS_CONVERGENCE_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def env(urls: DatabaseUrls) -> Iterator[Env]:
    with open_env(urls) as opened:
        yield opened


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(data=st.data())
def test_r22_state_is_a_function_of_the_data_whatever_the_schedule(env: Env, data) -> None:
    shop = data.draw(shops())
    steps = data.draw(schedules(shop))
    problems = check_schedule(env, shop, steps)
    assert not problems, "\n".join(problems[:40])
