-- Baseline: the shop's pre-existing logs tables (R2, docs/rules.md). Demo and tests only.
CREATE TABLE IF NOT EXISTS job_operations (
    job_operation_id TEXT PRIMARY KEY,
    job_id           TEXT,
    version_tag      TEXT,
    operation_id     TEXT,
    sequence_order   INTEGER,
    required         BOOLEAN
);

CREATE TABLE IF NOT EXISTS imposition_operations (
    imposition_operation_id TEXT PRIMARY KEY,
    imposition_id           TEXT,
    operation_id            TEXT,
    sequence_order          INTEGER,
    required                BOOLEAN
);

CREATE TABLE IF NOT EXISTS imposition_file_mapping (
    id            BIGSERIAL PRIMARY KEY,
    imposition_id TEXT NOT NULL,
    file_id       TEXT NOT NULL,
    created_at    TIMESTAMP DEFAULT now()
);

CREATE TABLE IF NOT EXISTS production_planner_paths (
    id            BIGSERIAL PRIMARY KEY,
    runlist_id    TEXT NOT NULL,
    imposition_id TEXT NOT NULL,
    path          TEXT,
    created_at    TIMESTAMP DEFAULT now()
);
