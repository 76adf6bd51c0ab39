-- jobstatus additions to logs (docs/rules.md §1). Additive and idempotent (R1).
ALTER TABLE job_operations ADD COLUMN IF NOT EXISTS completed_at TIMESTAMP;
ALTER TABLE job_operations ADD COLUMN IF NOT EXISTS completed_by VARCHAR;
ALTER TABLE job_operations ADD COLUMN IF NOT EXISTS source_id BIGINT;
ALTER TABLE job_operations ADD COLUMN IF NOT EXISTS status VARCHAR;
ALTER TABLE job_operations ADD COLUMN IF NOT EXISTS notes TEXT;

ALTER TABLE imposition_operations ADD COLUMN IF NOT EXISTS completed_at TIMESTAMP;
ALTER TABLE imposition_operations ADD COLUMN IF NOT EXISTS completed_by VARCHAR;
ALTER TABLE imposition_operations ADD COLUMN IF NOT EXISTS source_id BIGINT;
ALTER TABLE imposition_operations ADD COLUMN IF NOT EXISTS status VARCHAR;
ALTER TABLE imposition_operations ADD COLUMN IF NOT EXISTS notes TEXT;

CREATE INDEX IF NOT EXISTS idx_job_operations_completed ON job_operations (completed_at);
CREATE INDEX IF NOT EXISTS idx_job_operations_source ON job_operations (completed_by, source_id);
CREATE INDEX IF NOT EXISTS idx_imposition_operations_completed ON imposition_operations (completed_at);
CREATE INDEX IF NOT EXISTS idx_imposition_operations_source
    ON imposition_operations (completed_by, source_id);

-- Lookups by the rows we update: see 0013_operation_row_keys (hash, R1). This migration once
-- created btree indexes here on the raw key columns; a btree refuses an identifier past ~2.7 kB,
-- so a fresh install no longer creates them and 0013 drops them where they exist.
-- Hash indexes on the shop's single text columns: equality lookups only, and no size limit
-- that could make the shop's own inserts fail.
CREATE INDEX IF NOT EXISTS idx_imposition_file_mapping_imposition
    ON imposition_file_mapping USING hash (imposition_id);
-- R9: all files of a job, whatever imposition holds them. Must match resolve.FILE_JOB_SQL.
CREATE INDEX IF NOT EXISTS idx_imposition_file_mapping_job
    ON imposition_file_mapping
    USING hash ((substring(file_id from '^FILE_[^_]+_[^_]+_([0-9]+_[0-9]+)(?:_|$)')));
CREATE INDEX IF NOT EXISTS idx_production_planner_paths_runlist
    ON production_planner_paths USING hash (runlist_id);
CREATE INDEX IF NOT EXISTS idx_production_planner_paths_imposition
    ON production_planner_paths USING hash (imposition_id);

-- R8: operation names ↔ codes; the shop edits this table, not the code.
CREATE TABLE IF NOT EXISTS operation_codes (
    operation    TEXT PRIMARY KEY,
    operation_id TEXT,                 -- NULL: known name, code not assigned yet
    updated_at   TIMESTAMP NOT NULL DEFAULT now()
);
INSERT INTO operation_codes (operation, operation_id) VALUES
    ('print', 'op001'), ('coating', 'op003'), ('kiss_cut', 'op006'),
    ('backscore', NULL), ('slitter', NULL)
ON CONFLICT (operation) DO NOTHING;
