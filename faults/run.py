"""`python -m faults.run [--scale S] [--scenarios 1 3 4 …]`: the fault suite, as a table.

Exit status 1 when any scenario lost or doubled a row or ended in a different state.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings

from faults.harness import Cluster, Result, table
from faults.scenarios import SCENARIOS, Suite
from jobstatus_testkit.databases import embedded_server


def _hostile(name: str):
    def scenario(suite: Suite) -> Result:
        from faults import hostile  # hypothesis and schemathesis only when asked for

        return getattr(hostile, name)(suite)

    return scenario


def _convergence(suite: Suite) -> Result:
    from faults.convergence import convergence  # hypothesis only when asked for

    return convergence(suite, examples=suite.convergence_examples)


def all_scenarios() -> dict:
    return {
        **SCENARIOS,
        "7": _hostile("hostile_input"),
        "8": _hostile("api_fuzz_and_burst"),
        "9": _convergence,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults.run", description=__doc__)
    parser.add_argument(
        "--scale", type=int, default=25, help="backlog of scenarios 2 and 5 (125 ≈ 100k events)"
    )
    parser.add_argument(
        "--small-scale",
        type=int,
        default=1,
        help="backlog of scenarios 1, 3, 4, 6, 7 and 8 (1 ≈ 800 print events, several windows)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--convergence-examples", type=int, default=300, help="scenario 9's random schedules"
    )
    parser.add_argument("--scenarios", nargs="*", default=None, help="numbers 1-9 (default: all)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    scenarios = all_scenarios()
    chosen = args.scenarios or sorted(scenarios)
    results: list[Result] = []
    started = time.monotonic()
    with embedded_server() as server:
        cluster = Cluster(server.folder, server.admin_uri, server.handle)
        suite = Suite(
            cluster,
            seed=args.seed,
            scale=args.scale,
            small_scale=args.small_scale,
            convergence_examples=args.convergence_examples,
        )
        for number in chosen:
            print(f"--- scenario {number} ...", flush=True)
            try:
                result = scenarios[number](suite)
            except Exception:  # noqa: BLE001 - a crashed scenario is a row of the table
                result = Result(f"{number} CRASHED", equal=False)
                result.notes.append(traceback.format_exc())
            results.append(result)
            print(f"    {result.scenario}: {result.seconds}s, ok={result.ok}", flush=True)
            for note in result.notes:
                print("    " + note.replace("\n", "\n    "), flush=True)
    print()
    print(table(results))
    print(f"\n{len(results)} scenarios in {time.monotonic() - started:.0f} s")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
