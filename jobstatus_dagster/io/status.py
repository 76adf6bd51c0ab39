"""Reading a job's status for people and other systems (CLI `status`, `GET /api/job-status`)."""

import sqlalchemy as sa

from jobstatus_dagster.core.identifiers import version_sort_key


def read_job_status(
    jobmanager: sa.Engine,
    logs: sa.Engine,
    job_id: str,
    *,
    limit: int = 50,
    before: int | None = None,
) -> dict | None:
    """Current operations, per-version print state and the audit history (newest first).

    None when the job is unknown to both the jobs table and our own records.
    """
    with jobmanager.connect() as conn:
        operations = conn.execute(
            sa.text("SELECT operations FROM jobs WHERE job_id = :j"), {"j": job_id}
        ).first()
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
        rows = (
            conn.execute(
                sa.text(
                    "SELECT o.version_tag, o.operation_id, c.operation, o.status, o.completed_at,"
                    " o.completed_by, o.source_id, o.notes FROM job_operations o"
                    " LEFT JOIN operation_codes c ON c.operation_id = o.operation_id"
                    " WHERE o.job_id = :j ORDER BY o.version_tag, o.sequence_order, o.operation_id"
                ),
                {"j": job_id},
            )
            .mappings()
            .all()
        )
    by_version: dict[str, dict] = {}
    for row in rows:
        version = by_version.setdefault(
            row["version_tag"],
            {"version_tag": row["version_tag"], "status": None, "notes": None, "operations": []},
        )
        version["operations"].append(dict(row))
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
