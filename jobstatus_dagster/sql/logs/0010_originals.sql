-- R22b: what a *_operations row held before jobstatus first wrote it; a withdrawn value returns
-- to it. Additive and idempotent (R1).
CREATE TABLE IF NOT EXISTS operation_row_originals (
    table_name   TEXT NOT NULL,   -- 'job_operations' | 'imposition_operations'
    row_id       TEXT NOT NULL,   -- job_operation_id | imposition_operation_id
    completed_at TIMESTAMP,
    completed_by VARCHAR,
    source_id    BIGINT,
    status       VARCHAR,
    notes        TEXT,
    saved_at     TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, row_id)
);
