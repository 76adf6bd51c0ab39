-- R4: the *_operations rows jobstatus writes are matched on trimmed identifiers, the same way
-- as every other lookup (io/writer.py). This migration once created composite btree expression
-- indexes here; a btree refuses an identifier past ~2.7 kB (R1), so a fresh install no longer
-- creates them: 0013_operation_row_keys replaces them with hash indexes and drops them where
-- they exist. Kept (empty of statements) so that its id stays in every database's history.
SELECT 1;
