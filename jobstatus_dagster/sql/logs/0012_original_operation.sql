-- R22b: which operation name jobstatus last wrote into a *_operations row, so a row the name no
-- longer reaches (its code changed, or no evidence is left) returns to its original. Additive (R1).
-- Looked up by row (the primary key), never by operation: an index on the name would invite
-- the planner to read every row ever written for it.
ALTER TABLE operation_row_originals ADD COLUMN IF NOT EXISTS operation TEXT;
