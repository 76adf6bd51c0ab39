"""Scenario 9: the convergence property (R22–R24) with a large budget of random shops and
schedules (the harness of jobstatus_testkit/convergence.py; `make test` runs 12): after every
step the state equals one from-scratch run over the rows processed so far, made on a second
database pair (R22a), and the read surfaces agree with the state tables; at the end it equals a
from-scratch run over all data and a re-run changes nothing."""

from __future__ import annotations

import sys
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults.harness import Result


def convergence(suite, examples: int = 300, max_events: int = 14, max_steps: int = 16) -> Result:
    from jobstatus_testkit.convergence import open_env

    result = Result(f"9 convergence ({examples} random shops × schedules)")
    urls = suite.cluster.migrated("convergence")
    reference_urls = suite.cluster.migrated("convergence_ref")  # the per-step from-scratch run
    with open_env(urls) as env, open_env(reference_urls, reference=True) as reference:
        return _run(env, reference, result, examples, max_events, max_steps)


def _run(env, reference, result: Result, examples: int, max_events: int, max_steps: int) -> Result:
    from jobstatus_testkit.convergence import check_schedule, defect_class, schedules, shops

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
        problems = check_schedule(env, reference, shop, steps)
        seen["examples"] += 1
        seen["rows"] += len(shop.prints) + len(shop.scans)
        seen["steps"] += len(steps) - 1
        if seen["examples"] % 25 == 0:  # a long run shows it is moving
            took = round(time.monotonic() - started)
            print(f"scenario 9: {seen['examples']} examples, {took} s", file=sys.stderr)
        if problems:
            seen["differences"] += len(problems)
            raise AssertionError(f"[{defect_class(problems)}]\n" + "\n".join(problems[:40]))

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
