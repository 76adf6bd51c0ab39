-- R22b: an attribution withdrawn and later made again keeps when it was last withdrawn, so the
-- audit still shows the withdrawal. Additive (R1).
ALTER TABLE job_status_updates ADD COLUMN IF NOT EXISTS withdrawn_before TIMESTAMP;
ALTER TABLE imposition_status_updates ADD COLUMN IF NOT EXISTS withdrawn_before TIMESTAMP;
