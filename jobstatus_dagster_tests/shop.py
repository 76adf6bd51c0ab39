"""A small factory of shop data for tests: rows go straight into the shop's tables."""

import itertools
import json
from datetime import datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from jobstatus_dagster.db import DatabaseUrls, to_sqlalchemy_url
from jobstatus_dagster.definitions import build_definitions
from jobstatus_dagster.pipeline.resources import ProcessingSettings
from jobstatus_dagster.pipeline.runner import SourceOutcome, process_source
from jobstatus_testkit.state import read_state

T0 = datetime(2026, 11, 1, 8, 0, 0)
_job_numbers = itertools.count(1000)


class Shop:
    """Inserts shop rows and reads back the state a user would look at."""

    def __init__(self, urls: DatabaseUrls, **processing: int | str) -> None:
        self.urls = urls
        self.processing = ProcessingSettings(**processing)
        self.jm = sa.create_engine(to_sqlalchemy_url(urls.jobmanager))
        self.logs = sa.create_engine(to_sqlalchemy_url(urls.logs))
        self._markers = itertools.count(
            self.scalar(self.jm, 'SELECT COALESCE(max(marker), 0) + 1 FROM "print OS"')
        )

    def __enter__(self) -> "Shop":
        return self

    def __exit__(self, *exc: object) -> None:
        self.jm.dispose()
        self.logs.dispose()

    # ----- writing shop data -------------------------------------------------------------
    @staticmethod
    def scalar(engine: sa.Engine, sql: str, **params: object):
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    @staticmethod
    def rows(engine: sa.Engine, sql: str, **params: object) -> list[dict]:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql), params)]

    @staticmethod
    def execute(engine: sa.Engine, sql: str, params: list[dict] | dict | None = None) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params or {})

    def new_job_id(self) -> str:
        n = next(_job_numbers)
        return f"{n}_{n + 5000}"

    def add_job(self, job_id: str | None = None, in_jobs: bool = True) -> str:
        job_id = job_id or self.new_job_id()
        if in_jobs:
            self.execute(
                self.jm,
                "INSERT INTO jobs (job_id, job_name) VALUES (:j, :n) ON CONFLICT DO NOTHING",
                {"j": job_id, "n": f"Job {job_id}"},
            )
        return job_id

    def add_job_operation(self, job_id: str, version: str, operation_id: str = "op001") -> None:
        self.execute(
            self.logs,
            "INSERT INTO job_operations (job_operation_id, job_id, version_tag, operation_id,"
            " sequence_order, required) VALUES (:id, :j, :v, :o, 1, true) ON CONFLICT DO NOTHING",
            {
                "id": f"{job_id}:{version}:{operation_id}",
                "j": job_id,
                "v": version,
                "o": operation_id,
            },
        )

    def add_imposition_operation(self, imposition_id: str, operation_id: str = "op001") -> None:
        self.execute(
            self.logs,
            "INSERT INTO imposition_operations (imposition_operation_id, imposition_id,"
            " operation_id, sequence_order, required) VALUES (:id, :i, :o, 1, true)"
            " ON CONFLICT DO NOTHING",
            {"id": f"{imposition_id}:{operation_id}", "i": imposition_id, "o": operation_id},
        )

    def map_files(self, imposition_id: str, file_ids: list[str], with_op_row: bool = True) -> None:
        self.execute(
            self.logs,
            "INSERT INTO imposition_file_mapping (imposition_id, file_id) VALUES (:i, :f)",
            [{"i": imposition_id, "f": f} for f in file_ids],
        )
        if with_op_row:
            self.add_imposition_operation(imposition_id)

    def print_event(
        self,
        imposition_id: str | None,
        status: str | None = "PRINTED",
        *,
        marker: int | None = None,
        at: datetime | None = None,
        minutes: int = 0,
    ) -> tuple[int, int]:
        """Insert one "print OS" row; returns (id, marker)."""
        marker = next(self._markers) if marker is None else marker
        at = at if at is not None else T0 + timedelta(minutes=minutes or marker)
        with self.jm.begin() as conn:
            source_id = conn.execute(
                sa.text(
                    'INSERT INTO "print OS" (name, status, marker, job_complete_time, copies,'
                    " payload) VALUES (:n, :s, :m, :t, 1, CAST(:p AS jsonb)) RETURNING id"
                ),
                {"n": imposition_id, "s": status, "m": marker, "t": at, "p": json.dumps({})},
            ).scalar_one()
        return source_id, marker

    def plan_runlist(self, runlist_id: str, imposition_ids: list[str]) -> None:
        self.execute(
            self.logs,
            "INSERT INTO production_planner_paths (runlist_id, imposition_id) VALUES (:r, :i)",
            [{"r": runlist_id, "i": i} for i in imposition_ids],
        )

    def scan(
        self,
        code: str | None,
        operations: object,
        *,
        at: datetime | None = None,
        machine: str = "coater-1",
    ) -> int:
        """Insert one scanned_codes row; ``operations`` is stored as JSON. Returns scan_id."""
        with self.jm.begin() as conn:
            return conn.execute(
                sa.text(
                    "INSERT INTO scanned_codes (code_text, scanned_at, machine_id, operations)"
                    " VALUES (:c, :t, :m, CAST(:o AS jsonb)) RETURNING scan_id"
                ),
                {
                    "c": code,
                    "t": at or T0,
                    "m": machine,
                    "o": None if operations is None else json.dumps(operations),
                },
            ).scalar_one()

    def job_op_row(self, job_id: str, version: str, operation_id: str) -> dict | None:
        found = self.rows(
            self.logs,
            "SELECT status, completed_at, completed_by, source_id, notes FROM job_operations"
            " WHERE job_id = :j AND version_tag = :v AND operation_id = :o",
            j=job_id,
            v=version,
            o=operation_id,
        )
        return found[0] if found else None

    def imposition_op_row(self, imposition_id: str, operation_id: str) -> dict | None:
        found = self.rows(
            self.logs,
            "SELECT status, completed_at, completed_by, source_id, notes FROM imposition_operations"
            " WHERE imposition_id = :i AND operation_id = :o",
            i=imposition_id,
            o=operation_id,
        )
        return found[0] if found else None

    # ----- running -----------------------------------------------------------------------
    def definitions(self) -> dg.Definitions:
        return build_definitions(self.urls.jobmanager, self.urls.logs, processing=self.processing)

    def process(self, instance: dg.DagsterInstance, source: str = "print_os") -> SourceOutcome:
        outcome = process_source(self.definitions(), instance, source, trigger="test")
        assert outcome.success, outcome.line()
        return outcome

    # ----- reading state -----------------------------------------------------------------
    def job_print_row(self, job_id: str, version: str) -> dict | None:
        return self.job_op_row(job_id, version, "op001")

    def imposition_print_row(self, imposition_id: str) -> dict | None:
        return self.imposition_op_row(imposition_id, "op001")

    def job_operations_json(self, job_id: str) -> dict | None:
        return self.scalar(self.jm, "SELECT operations FROM jobs WHERE job_id = :j", j=job_id)

    def audit(self, job_id: str) -> list[dict]:
        return self.rows(
            self.jm,
            "SELECT * FROM job_status_updates WHERE job_id = :j ORDER BY source_id, version_tag",
            j=job_id,
        )

    def failures(self, source_id: int | None = None, reason: str | None = None) -> list[dict]:
        return self.rows(
            self.jm,
            "SELECT * FROM processing_failures WHERE (CAST(:s AS bigint) IS NULL OR source_id = :s)"
            " AND (CAST(:r AS text) IS NULL OR reason = :r) ORDER BY failure_id",
            s=source_id,
            r=reason,
        )

    def marker(self, marker_type: str = "print_os") -> int:
        return self.scalar(
            self.jm,
            "SELECT last_processed_id FROM processing_markers WHERE marker_type = :t",
            t=marker_type,
        )

    def state(self) -> dict[str, list]:
        """What two databases that processed the same backlog to the same effect share."""
        return read_state(self.jm, self.logs)

    def snapshot(self) -> dict[str, list]:
        """Every table we write, sorted, without write timestamps: equal when nothing changed."""
        jm_tables = {
            "job_status_updates": "SELECT source_type, source_id, job_id, version_tag, operation,"
            " status, printed_count, aborted_count, total_count, applied, notes, event_time,"
            " processed_at, run_id FROM job_status_updates",
            "processing_failures": "SELECT source_type, source_id, reason, subject, attempts,"
            " resolved_at FROM processing_failures",
            "jobs": "SELECT job_id, operations::text FROM jobs",
            "processing_markers": "SELECT marker_type, last_processed_id, updated_at"
            " FROM processing_markers",
        }
        logs_tables = {
            "job_operations": "SELECT * FROM job_operations",
            "imposition_operations": "SELECT * FROM imposition_operations",
        }
        snap = {}
        for name, sql in jm_tables.items():
            snap[name] = sorted(map(repr, self.rows(self.jm, sql)))
        for name, sql in logs_tables.items():
            snap[name] = sorted(map(repr, self.rows(self.logs, sql)))
        return snap
