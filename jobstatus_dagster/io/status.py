"""Reading a job's status for people and other systems (CLI `status`, `GET /api/job-status`)."""

import sqlalchemy as sa

from jobstatus_dagster.core.identifiers import normalise_operation, trim_id, version_sort_key
from jobstatus_dagster.io.compose import Identifier, composed, trimmed

# R4: the shop's rows are matched on their trimmed ids, through the trimmed expression indexes
# (jobs: idx_jobs_job_id_trimmed; job_operations: idx_job_operations_job_trimmed; both hash). Of
# several jobs rows that trim alike, one whose operations the writer can write (an object,
# R20), then the one spelled exactly so, then the lowest spelling.
# R20: jobs.operations that is not a JSON object (null, a string, an array, a number) reads
# as no flags.
JOB_ROW_SQL = composed(
    "SELECT CASE WHEN jsonb_typeof(operations) = 'object' THEN operations"
    " ELSE '{{}}'::jsonb END AS operations FROM jobs"
    " WHERE {job_id} = :j ORDER BY jsonb_typeof(operations) IS NOT DISTINCT FROM 'object' DESC,"
    " job_id = :j DESC, job_id LIMIT 1",
    job_id=trimmed(Identifier("job_id")),
)
JOB_OPERATIONS_SQL = composed(
    "SELECT {version_tag} AS version_tag, {operation_id} AS operation_id, status, completed_at,"
    " completed_by, source_id, notes FROM job_operations"
    " WHERE {job_id} = :j ORDER BY 1, sequence_order, 2",
    **{column: trimmed(Identifier(column)) for column in ("job_id", "version_tag", "operation_id")},
)
OPERATION_CODES_SQL = sa.text("SELECT operation, operation_id FROM operation_codes")


def operation_names(logs: sa.Connection) -> dict[str, str]:
    """operation_id (trimmed, R4) → operation name normalised as the writer reads it (R7, R8):
    the shop's row 'Print → op001' names ``print``. Where names share a code, ``print`` wins,
    then the lowest name."""
    names: dict[str, str] = {}
    for name, code in sorted(
        (normalise_operation(n), trim_id(c))
        for n, c in logs.execute(OPERATION_CODES_SQL)
        if isinstance(n, str) and isinstance(c, str)
    ):
        if name and code and (code not in names or name == "print"):
            names[code] = name
    return names


def read_job_status(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    job_id: str,
    *,
    limit: int = 50,
    before: int | None = None,
) -> dict | None:
    """Current operations, per-version print state and the audit history (newest first).

    None when the job is unknown to both the jobs table and our own records. ``job_id`` is an
    identifier like any other (R4): compared trimmed, and answered trimmed.
    """
    job_id = trim_id(job_id)
    with jobmanager.connect() as conn:
        operations = conn.execute(JOB_ROW_SQL, {"j": job_id}).first()
        known = (
            operations is not None
            or conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM job_operation_state WHERE job_id = :j)"
                    " OR EXISTS (SELECT 1 FROM job_status_updates WHERE job_id = :j)"
                ),
                {"j": job_id},
            ).scalar_one()
        )
        if not known:
            return None
        history = (
            conn.execute(
                sa.text(
                    "SELECT update_id, operation AS operation_type, status, source_type, source_id,"
                    " version_tag, event_time AS updated_at, processed_at, printed_count,"
                    " aborted_count, total_count, applied, notes, run_id, withdrawn_at"
                    " FROM job_status_updates"
                    " WHERE job_id = :j AND (CAST(:before AS bigint) IS NULL OR update_id < :before)"
                    " ORDER BY update_id DESC LIMIT :limit"
                ),
                {"j": job_id, "before": before, "limit": limit},
            )
            .mappings()
            .all()
        )
        counts = (
            conn.execute(
                sa.text(
                    # R11: the version's print state as projected, not its latest audit row.
                    "SELECT version_tag, printed_count, aborted_count, total_count"
                    " FROM job_print_state WHERE job_id = :j ORDER BY version_tag"
                ),
                {"j": job_id},
            )
            .mappings()
            .all()
        )
    with logs.connect() as conn:
        names = operation_names(conn)
        found = [dict(row) for row in conn.execute(JOB_OPERATIONS_SQL, {"j": job_id}).mappings()]
    rows = [{**row, "operation": names.get(row["operation_id"] or "")} for row in found]
    by_version: dict[str, dict] = {}
    for row in rows:
        version = by_version.setdefault(
            row["version_tag"],
            {"version_tag": row["version_tag"], "status": None, "notes": None, "operations": []},
        )
        version["operations"].append(row)
        if row["operation"] == "print":
            version["status"], version["notes"] = row["status"], row["notes"]
    for row in counts:
        version = by_version.setdefault(
            row["version_tag"],
            {"version_tag": row["version_tag"], "status": None, "notes": None, "operations": []},
        )
        version.update(
            printed=row["printed_count"], aborted=row["aborted_count"], total=row["total_count"]
        )
    versions = sorted(by_version.values(), key=lambda v: version_sort_key(v["version_tag"]))
    return {
        "job_id": job_id,
        "in_jobs_table": operations is not None,
        "current_status": (operations[0] if operations else None) or {},
        "versions": versions,
        "update_history": [dict(r) for r in history],
        "next_before": history[-1]["update_id"] if len(history) == limit else None,
    }
