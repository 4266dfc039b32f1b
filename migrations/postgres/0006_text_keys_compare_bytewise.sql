-- Text keys compare byte by byte (collation "C"). Every index leads with the tenant, so every
-- B-tree step of every write and lookup compares tenant strings, and under the database's
-- collation each comparison follows the locale's rules: in bench/collation.py PostgreSQL spent
-- 1.17-1.19 x the CPU per indexed row under ICU en-US that it spent under "C" (C.UTF-8 was
-- within the noise, 0.98-1.06 x). These keys are only ever compared for equality, which any deterministic collation
-- decides alike, and no query orders by them: no result changes. Query parameters and
-- recordset columns keep the default collation; a column's own collation wins over the
-- default, so comparisons with them use "C" and the indexes.
-- The tables are not rewritten (text stays text); the indexes on these columns are rebuilt, in
-- this migration's transaction, which on a large ledger takes a while: apply it in a quiet
-- moment. The statistics settings of migration 0003 are kept.
ALTER TABLE tasks ALTER COLUMN tenant TYPE text COLLATE "C",
                  ALTER COLUMN idempotency_key TYPE text COLLATE "C";
ALTER TABLE receipts ALTER COLUMN tenant TYPE text COLLATE "C",
                     ALTER COLUMN type TYPE text COLLATE "C";
ALTER TABLE leases ALTER COLUMN tenant TYPE text COLLATE "C";
