-- Claims read PENDING tasks and ACTIVE tasks whose lease expired through separate partial
-- indexes. One index over both states made every claim step over all the live leases
-- (ACTIVE rows that are not claimable), so a claim cost grew with the work in progress.
DROP INDEX IF EXISTS tasks_claimable;
CREATE INDEX tasks_pending ON tasks (tenant, priority DESC, created_at, task_id)
    WHERE state = 'PENDING';
CREATE INDEX tasks_leased ON tasks (tenant, lease_expires_at)
    WHERE state = 'ACTIVE';
-- Obligations are found by id: keyset cursors, and terminating receipts closing them.
CREATE UNIQUE INDEX tasks_by_obligation ON tasks (tenant, obligation_receipt_id);
