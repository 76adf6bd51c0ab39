"""Scenario 9: the convergence property (R22–R24) with a large budget of random shops and
schedules (the harness of jobstatus_testkit/convergence.py; `make test` runs 12)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.harness import Result


def convergence(suite, examples: int = 300, max_events: int = 14, max_steps: int = 16) -> Result:
    from jobstatus_testkit.convergence import open_env

    result = Result(f"9 convergence ({examples} random shops × schedules)")
    urls = suite.cluster.migrated("convergence")
    with open_env(urls) as env:
        return _run(env, result, examples, max_events, max_steps)


def _run(env, result: Result, examples: int, max_events: int, max_steps: int) -> Result:
    from jobstatus_testkit.convergence import check_schedule, schedules, shops

    seen = {"examples": 0, "rows": 0, "steps": 0, "differences": 0}
    started = time.monotonic()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def prop(data) -> None:
        shop = data.draw(shops(max_events=max_events))
        steps = data.draw(schedules(shop, max_steps=max_steps))
        problems = check_schedule(env, shop, steps)
        seen["examples"] += 1
        seen["rows"] += len(shop.prints) + len(shop.scans)
        seen["steps"] += len(steps) - 1
        if problems:
            seen["differences"] += len(problems)
            raise AssertionError("\n".join(problems[:40]))

    try:
        prop()
        result.equal = True
    except AssertionError as failure:
        result.equal = False
        result.notes.append(f"falsified:\n{failure}")
    result.runs = env.runs
    result.rows_in = seen["rows"]
    result.applied = seen["rows"]
    result.seconds = round(time.monotonic() - started, 1)
    result.notes.append(
        f"{seen['examples']} examples run, {seen['steps']} schedule steps, {env.runs} windows"
        f" written, {seen['differences']} differences"
    )
    return result
