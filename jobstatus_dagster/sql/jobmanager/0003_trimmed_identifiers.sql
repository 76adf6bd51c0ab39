-- R4: "print OS".name compares trimmed (spaces, tabs, newlines, carriage returns), as the
-- print history and print-marker lookups do (io/sources.py, core/identifiers.trimmed_sql).
-- Additive and idempotent (R1). Hash, as idx_print_os_name: equality only, and a btree would
-- refuse the press a row whose name exceeds ~2.7 kB.
CREATE INDEX IF NOT EXISTS idx_print_os_name_trimmed
    ON "print OS" USING hash ((btrim(name, E' \t\n\r')));
