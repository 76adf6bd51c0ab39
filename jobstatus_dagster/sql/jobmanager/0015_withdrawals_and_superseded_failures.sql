-- R22b: a window finds the rows processed in its range that the shop has deleted or moved
-- since (io/sources.py, _GONE and the 'moved' rows). Our own table, so a btree is safe: the
-- marker is a bigint. Additive and idempotent (R1).
CREATE INDEX IF NOT EXISTS idx_processed_source_rows_marker
    ON processed_source_rows (source_type, marker);
-- R22: a write resolves the open failures about the target keys it projected again (a missing
-- row, an operation with no code) that a later winner superseded. Subjects are cut to 200
-- characters by the writer, so a btree holds them.
CREATE INDEX IF NOT EXISTS idx_processing_failures_open_subject
    ON processing_failures (subject) WHERE resolved_at IS NULL;
