-- R4: a job's status (io/status.py) reads every job_operations row of one trimmed job id. The
-- btree that served it (0011) refused long ids and is gone (0013); a hash index on the trimmed
-- job id accepts any length (R1). Additive and idempotent.
CREATE INDEX IF NOT EXISTS idx_job_operations_job_trimmed
    ON job_operations USING hash ((btrim(job_id, E' \t\n\r')));
