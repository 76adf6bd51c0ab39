-- R22b: a window finds the rows processed in its range that the shop has deleted or moved
-- since (io/sources.py, _GONE and the 'moved' rows). Our own table, so a btree is safe: the
-- marker is a bigint. Additive and idempotent (R1).
CREATE INDEX IF NOT EXISTS idx_processed_source_rows_marker
    ON processed_source_rows (source_type, marker);
