-- R22b: what a *_operations row held after jobstatus last wrote it. When the row holds something
-- else when we come back (the shop wrote over ours, or deleted the row and added it again), the
-- shop's value is the row's new original. written_known is false on rows kept before this
-- migration until the next write records them. Additive and idempotent (R1).
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS written_completed_at TIMESTAMP;
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS written_completed_by VARCHAR;
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS written_source_id BIGINT;
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS written_status VARCHAR;
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS written_notes TEXT;
ALTER TABLE operation_row_originals
    ADD COLUMN IF NOT EXISTS written_known BOOLEAN NOT NULL DEFAULT false;
