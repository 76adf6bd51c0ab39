-- R4: the *_operations rows jobstatus writes are matched on trimmed identifiers, the same way
-- as every other lookup (io/writer.py). Composite btree expression indexes on exactly those
-- expressions, like 0001's idx_*_operations_key on the raw columns: with one column hashed
-- the planner hashed the whole table per window instead (a cost growing with the shop).
-- Additive and idempotent (R1).
CREATE INDEX IF NOT EXISTS idx_job_operations_key_trimmed ON job_operations (
    (btrim(job_id, E' \t\n\r')), (btrim(version_tag, E' \t\n\r')),
    (btrim(operation_id, E' \t\n\r')));
CREATE INDEX IF NOT EXISTS idx_imposition_operations_key_trimmed ON imposition_operations (
    (btrim(imposition_id, E' \t\n\r')), (btrim(operation_id, E' \t\n\r')));
