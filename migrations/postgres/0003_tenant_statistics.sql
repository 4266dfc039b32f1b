-- No planner statistics on the tenant columns. A tenant that appeared since the last ANALYZE
-- is missing from those statistics, so the planner estimated one row for it and chose any
-- tenant-prefixed index as well as any other: a claim then read every task of the tenant,
-- and even a primary-key lookup went through another index, filtering the tenant's rows,
-- until autovacuum next analyzed the table (after 10 % of it had changed). Without them,
-- `tenant = $1` is estimated at 0.5 % of the table, and lookups by (tenant, id) take the
-- primary key whatever size each tenant is. Every query names its tenant and every index
-- leads with it, so nothing else leaned on these statistics.
-- Setting the column to its own type drops the statistics gathered so far (ANALYZE would
-- keep them); the table is not rewritten and its indexes are kept.
ALTER TABLE tasks ALTER COLUMN tenant SET STATISTICS 0, ALTER COLUMN tenant TYPE text;
ALTER TABLE receipts ALTER COLUMN tenant SET STATISTICS 0, ALTER COLUMN tenant TYPE text;
ALTER TABLE leases ALTER COLUMN tenant SET STATISTICS 0, ALTER COLUMN tenant TYPE text;
