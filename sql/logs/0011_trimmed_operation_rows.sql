-- R4: the *_operations rows jobstatus writes are matched on trimmed identifiers, the same way
-- as every other lookup (io/writer.py). Hash expression indexes on exactly those expressions.
-- Additive and idempotent (R1).
CREATE INDEX IF NOT EXISTS idx_job_operations_job_trimmed
    ON job_operations USING hash ((btrim(job_id, E' \t\n\r')));
CREATE INDEX IF NOT EXISTS idx_imposition_operations_imposition_trimmed
    ON imposition_operations USING hash ((btrim(imposition_id, E' \t\n\r')));
