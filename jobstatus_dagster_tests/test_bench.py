"""The benchmark scripts (bench/) still run: each at a tiny size, and prints its table.

They run side by side (each starts its own embedded Postgres), so the test stays short.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "throughput": (
        "backlog throughput",
        ["--scale", "1", "--reference-events", "20", "--sources", "print_os", "--db-time"],
    ),
    "overhead": ("per-run overhead", ["--scale", "1", "--repeat", "1"]),
    "memory": ("memory bound", ["--events", "400"]),
    "history": ("history independence", ["--history", "400", "--new", "40"]),
    "integration": (
        "Read latency over HTTP, 2,000 audit rows, 200 jobs",
        ["--audit-rows", "2000", "--jobs", "200", "--requests", "5", "--deliveries", "20"],
    ),
    "change_triggers": (
        "A 500-row insert, median of 1 (ratio to no subscription)",
        ["--rows", "500", "--repeat", "1"],
    ),
    "api_load": (
        "API under bursts: the dagster database and a reader meanwhile",
        ["--burst", "5", "--abandoned", "3", "--hang-up", "1", "--new-rows", "10"]
        + ["--idle", "1", "--after", "2"],
    ),
    "storage": (
        "a year of runs",
        [
            "--windows",
            "1",
            "--days",
            "2",
            "--retention-days",
            "1",
            "--scale",
            "0.002",
            "--steady-days",
            "0",
        ],
    ),
}


def test_bench_scripts_print_their_tables(tmp_path: Path) -> None:
    running = {}
    for script, (_, args) in TINY.items():
        out = (tmp_path / f"{script}.out").open("w+")
        err = (tmp_path / f"{script}.err").open("w+")
        proc = subprocess.Popen(
            [sys.executable, "-m", f"bench.{script}", *args], cwd=ROOT, stdout=out, stderr=err
        )
        running[script] = (proc, out, err)
    failures = []
    for script, (proc, out, err) in running.items():
        code = proc.wait(timeout=240)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        title = TINY[script][0]
        table = stdout.split(f"== {title} ==", 1)[-1].strip().splitlines()
        if code != 0 or f"== {title} ==" not in stdout or "machine:" not in stdout:
            failures.append(f"{script} ({code}):\n{stdout[-1500:]}\n{stderr[-3000:]}")
        elif len(table) < 3 or not set(table[1]) <= {"-", "+"}:
            failures.append(f"{script}: no table rows:\n{stdout[-1500:]}")
    assert not failures, "\n\n".join(failures)
