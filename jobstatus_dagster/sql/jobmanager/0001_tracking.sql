-- jobstatus additions to jobmanager (docs/rules.md §1). Additive and idempotent (R1).
CREATE TABLE IF NOT EXISTS processing_markers (
    marker_id         SERIAL PRIMARY KEY,
    marker_type       VARCHAR NOT NULL UNIQUE,   -- 'print_os' | 'scanned_codes'
    last_processed_id BIGINT NOT NULL,           -- R3: the print marker is bigint
    last_processed_at TIMESTAMP DEFAULT now(),
    updated_at        TIMESTAMP DEFAULT now()
);
INSERT INTO processing_markers (marker_type, last_processed_id)
VALUES ('print_os', 0), ('scanned_codes', 0)
ON CONFLICT (marker_type) DO NOTHING;

ALTER TABLE jobs ADD COLUMN IF NOT EXISTS operations JSONB DEFAULT '{}'::jsonb;

-- R17: the audit trail, one row per (source, job version, operation).
CREATE TABLE IF NOT EXISTS job_status_updates (
    update_id     BIGSERIAL PRIMARY KEY,
    source_type   VARCHAR NOT NULL,              -- 'print_os' | 'scanner'
    source_id     BIGINT NOT NULL,               -- "print OS".id | scan_id
    job_id        TEXT NOT NULL,
    version_tag   TEXT NOT NULL,
    operation     TEXT NOT NULL,
    status        TEXT,
    printed_count INTEGER,
    aborted_count INTEGER,
    total_count   INTEGER,
    applied       BOOLEAN NOT NULL DEFAULT true, -- false: lost on precedence (R15)
    notes         TEXT,
    event_time    TIMESTAMP,
    processed_at  TIMESTAMP NOT NULL DEFAULT now(),
    run_id        TEXT,
    CONSTRAINT job_status_updates_source_key
        UNIQUE (source_type, source_id, job_id, version_tag, operation)
);
CREATE INDEX IF NOT EXISTS idx_job_status_updates_job ON job_status_updates (job_id, update_id);

-- R20: what could not be applied; retryable ones are retried until resolved or exhausted.
CREATE TABLE IF NOT EXISTS processing_failures (
    failure_id       BIGSERIAL PRIMARY KEY,
    source_type      VARCHAR NOT NULL,
    source_id        BIGINT NOT NULL,
    reason           TEXT NOT NULL,
    subject          TEXT NOT NULL DEFAULT '',   -- what failed: a file id, a job, an operation
    detail           TEXT,
    retryable        BOOLEAN NOT NULL DEFAULT false,
    attempts         INTEGER NOT NULL DEFAULT 1,
    first_attempt_at TIMESTAMP NOT NULL DEFAULT now(),
    last_attempt_at  TIMESTAMP NOT NULL DEFAULT now(),
    resolved_at      TIMESTAMP,
    run_id           TEXT,
    CONSTRAINT processing_failures_key UNIQUE (source_type, source_id, reason, subject)
);
CREATE INDEX IF NOT EXISTS idx_processing_failures_open
    ON processing_failures (source_type, last_attempt_at) WHERE resolved_at IS NULL;

-- R15: the winning write per (job, operation); jobs.operations is its projection.
CREATE TABLE IF NOT EXISTS job_operation_state (
    job_id      TEXT NOT NULL,
    operation   TEXT NOT NULL,
    value       BOOLEAN NOT NULL,
    status      TEXT,
    version_tag TEXT,
    precedence  SMALLINT NOT NULL,
    state_based BOOLEAN NOT NULL DEFAULT false, -- recomputed from history: no event-time guard
    event_time  TIMESTAMP NOT NULL,
    source_type VARCHAR NOT NULL,
    source_id   BIGINT NOT NULL,
    notes       TEXT,
    updated_at  TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, operation)
);

-- R19: which source rows have been applied, so rows committed out of marker order are found.
CREATE TABLE IF NOT EXISTS processed_source_rows (
    source_type  VARCHAR NOT NULL,
    source_id    BIGINT NOT NULL,
    marker       BIGINT,
    run_id       TEXT,
    processed_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (source_type, source_id)
);

-- Window loads and history lookups key on these.
CREATE INDEX IF NOT EXISTS idx_print_os_marker ON "print OS" (marker, id);
-- Hash, not btree: equality is all we need, and a btree would refuse the press a row whose
-- name exceeds ~2.7 kB.
CREATE INDEX IF NOT EXISTS idx_print_os_name ON "print OS" USING hash (name);
CREATE INDEX IF NOT EXISTS idx_print_os_no_marker ON "print OS" (id) WHERE marker IS NULL;
