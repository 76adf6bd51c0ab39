-- R4: identifiers compare after trimming surrounding spaces, tabs, newlines and carriage
-- returns, the same way in Python and SQL (core/identifiers.py: trimmed_sql, FILE_JOB_SQL).
-- Expression indexes on exactly the trimmed expressions the lookups use (io/sources.py).
-- Additive and idempotent (R1); the untrimmed indexes of 0001 are left in place.
-- Hash, as in 0001: equality lookups only, and no size limit on the shop's own inserts.
CREATE INDEX IF NOT EXISTS idx_imposition_file_mapping_imposition_trimmed
    ON imposition_file_mapping USING hash ((btrim(imposition_id, E' \t\n\r')));
-- R9: all files of a job, whatever imposition holds them. Must match identifiers.FILE_JOB_SQL.
CREATE INDEX IF NOT EXISTS idx_imposition_file_mapping_job_trimmed
    ON imposition_file_mapping
    USING hash ((substring(btrim(file_id, E' \t\n\r') from '^FILE_[^_]+_[^_]+_([0-9]+_[0-9]+)(?:_|$)')));
CREATE INDEX IF NOT EXISTS idx_production_planner_paths_runlist_trimmed
    ON production_planner_paths USING hash ((btrim(runlist_id, E' \t\n\r')));
CREATE INDEX IF NOT EXISTS idx_production_planner_paths_imposition_trimmed
    ON production_planner_paths USING hash ((btrim(imposition_id, E' \t\n\r')));
