-- R22b: which operation name jobstatus last wrote into a *_operations row, so a row the name no
-- longer reaches (its code changed, or no evidence is left) returns to its original. Additive (R1).
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS operation TEXT;
CREATE INDEX IF NOT EXISTS idx_operation_row_originals_operation
    ON operation_row_originals (table_name, operation);
