-- R4: jobs.operations is written for the trimmed job id (io/writer.py). Additive (R1).
CREATE INDEX IF NOT EXISTS idx_jobs_job_id_trimmed ON jobs USING hash ((btrim(job_id, E' \t\n\r')));
