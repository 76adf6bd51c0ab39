-- R4: the read side lists jobs by trimmed id (io/feed.py). Rows whose job_id is already trimmed
-- page through the shop's own index on job_id; the few padded ones are found through this
-- index instead of a scan of jobs per page. Hash, not btree (R1: it never refuses the shop an
-- identifier of any length; a hash of a boolean is what Postgres matches for `WHERE <bool>`).
-- Partial: it holds the padded rows only. Additive and idempotent (R1).
CREATE INDEX IF NOT EXISTS idx_jobs_padded_ids ON jobs
    USING hash ((job_id <> btrim(job_id, E' \t\n\r')))
    WHERE job_id <> btrim(job_id, E' \t\n\r');
