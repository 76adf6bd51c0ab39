-- Baseline: the shop's pre-existing jobmanager tables (R2, docs/rules.md). Demo and tests only;
-- production databases already have them. Columns beyond the plan's are nullable or defaulted.
CREATE TABLE IF NOT EXISTS "print OS" (
    id                BIGSERIAL PRIMARY KEY,
    name              TEXT,
    status            TEXT,
    marker            BIGINT,
    job_name          TEXT,
    item_id           TEXT,
    job_complete_time TIMESTAMP,
    copies            INTEGER,
    payload           JSONB,
    created_at        TIMESTAMP DEFAULT now(),
    updated_at        TIMESTAMP DEFAULT now()
);

CREATE TABLE IF NOT EXISTS scanned_codes (
    scan_id    BIGSERIAL PRIMARY KEY,
    code_text  TEXT,
    scanned_at TIMESTAMP DEFAULT now(),
    machine_id TEXT,
    user_id    TEXT,
    operations JSONB,
    metadata   JSONB
);

CREATE TABLE IF NOT EXISTS jobs (
    id         BIGSERIAL PRIMARY KEY,
    job_id     TEXT NOT NULL UNIQUE,
    customer   TEXT,
    job_name   TEXT,
    created_at TIMESTAMP DEFAULT now()
);
