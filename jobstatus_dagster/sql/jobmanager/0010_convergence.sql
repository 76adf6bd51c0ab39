-- Convergence (R22-R24). Additive and idempotent (R1).

-- The audit doubles as the current attribution of each source row to job versions (R22):
-- a row no remaining evidence supports is kept and marked withdrawn, not deleted.
ALTER TABLE job_status_updates ADD COLUMN IF NOT EXISTS marker BIGINT;
ALTER TABLE job_status_updates ADD COLUMN IF NOT EXISTS withdrawn_at TIMESTAMP;
-- The notes of the evidence alone; `notes` adds the verdict (R23), recomputed as evidence comes.
ALTER TABLE job_status_updates ADD COLUMN IF NOT EXISTS evidence_notes TEXT;
CREATE INDEX IF NOT EXISTS idx_job_status_updates_job_operation
    ON job_status_updates (job_id, operation) WHERE withdrawn_at IS NULL;

-- The same for impositions: which source row attributes which operation to which imposition.
CREATE TABLE IF NOT EXISTS imposition_status_updates (
    update_id     BIGSERIAL PRIMARY KEY,
    source_type   VARCHAR NOT NULL,
    source_id     BIGINT NOT NULL,
    imposition_id TEXT NOT NULL,
    operation     TEXT NOT NULL,
    status        TEXT,
    marker        BIGINT,
    event_time    TIMESTAMP,
    evidence_notes TEXT,
    notes         TEXT,
    withdrawn_at  TIMESTAMP,
    processed_at  TIMESTAMP NOT NULL DEFAULT now(),
    run_id        TEXT,
    CONSTRAINT imposition_status_updates_source_key
        UNIQUE (source_type, source_id, imposition_id, operation)
);
CREATE INDEX IF NOT EXISTS idx_imposition_status_updates_key
    ON imposition_status_updates (imposition_id, operation) WHERE withdrawn_at IS NULL;

-- R11/R12: each job version's print state as PrintOS evidence gives it; `highest` marks the
-- job's highest version (R12) as the mapping stood when it was computed.
CREATE TABLE IF NOT EXISTS job_print_state (
    job_id        TEXT NOT NULL,
    version_tag   TEXT NOT NULL,
    status        TEXT,
    printed_count INTEGER NOT NULL,
    aborted_count INTEGER NOT NULL,
    total_count   INTEGER NOT NULL,
    highest       BOOLEAN NOT NULL,
    notes         TEXT,
    event_time    TIMESTAMP,
    source_id     BIGINT,
    updated_at    TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, version_tag)
);

-- R24: every write bumps the generation; a plan made at an older one is made again under the
-- lock before it writes.
CREATE TABLE IF NOT EXISTS processing_generation (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    generation BIGINT NOT NULL
);
INSERT INTO processing_generation (generation) VALUES (0) ON CONFLICT DO NOTHING;
