-- R1: nothing we add may refuse a write the shop's own schema accepts, an identifier of any
-- length included. The btree indexes of 0001 (idx_*_operations_key) and 0011
-- (idx_*_operations_key_trimmed) refused a row whose key exceeds ~2.7 kB, and made the migration
-- fail where the shop already held one. Replaced by hash indexes, which store a 4-byte hash and
-- accept any length, on exactly the expressions io/writer.py matches (core/identifiers.py:
-- row_key_sql): every trimmed key column (R4) joined by a separator into one value, so one
-- index probe finds a row by its whole key (with one column hashed the planner hashed the whole
-- table per window instead). The writer still compares each trimmed column as well, so a
-- separator inside an identifier can never match a wrong row. Additive and idempotent; the
-- only DROPs are of our own indexes, never of a column or a shop table.

-- A row by its whole key: (job, version, operation code) and (imposition, operation code).
CREATE INDEX IF NOT EXISTS idx_job_operations_row_key ON job_operations USING hash ((
    btrim(job_id, E' \t\n\r') || E'\x1f' || btrim(version_tag, E' \t\n\r')
    || E'\x1f' || btrim(operation_id, E' \t\n\r')));
CREATE INDEX IF NOT EXISTS idx_imposition_operations_row_key ON imposition_operations USING hash ((
    btrim(imposition_id, E' \t\n\r') || E'\x1f' || btrim(operation_id, E' \t\n\r')));
-- Every row of a touched job version or imposition, whatever its operation (R22b).
CREATE INDEX IF NOT EXISTS idx_job_operations_version_key ON job_operations USING hash ((
    btrim(job_id, E' \t\n\r') || E'\x1f' || btrim(version_tag, E' \t\n\r')));
CREATE INDEX IF NOT EXISTS idx_imposition_operations_imposition_key
    ON imposition_operations USING hash ((btrim(imposition_id, E' \t\n\r')));

DROP INDEX IF EXISTS idx_job_operations_key;
DROP INDEX IF EXISTS idx_imposition_operations_key;
DROP INDEX IF EXISTS idx_job_operations_key_trimmed;
DROP INDEX IF EXISTS idx_imposition_operations_key_trimmed;
