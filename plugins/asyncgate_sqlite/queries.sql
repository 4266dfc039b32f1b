-- insert_tasks --
-- A new task with its obligation (task.assigned) receipt; run for every row by ``many``.
INSERT INTO tasks (tenant, task_id, type, payload, principal, created_by, priority,
                   idempotency_key, request_hash, state, lease_generation,
                   obligation_receipt_id, obligation_open, created_at, updated_at)
VALUES (:tenant, :task_id, :type, :payload, :principal, :created_by, :priority,
        :idempotency_key, :request_hash, 'PENDING', 0,
        :obligation_receipt_id, 1, :created_at, :created_at);
-- The same receipt as views.obligation_receipt builds from the task row.
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
                      parent_receipt_ids, stripped_parent_receipt_ids, body, artifacts,
                      delivery_proof, content_hash, created_at)
VALUES (:tenant, :obligation_receipt_id, 'task.assigned', :task_id, :created_by, :principal,
        NULL, '[]', NULL, json_object('task_type', :type, 'priority', :priority), '[]', NULL,
        :request_hash, :created_at);

-- tasks_by_idempotency_keys --
-- The tasks that any of the given idempotency keys already created.
SELECT * FROM tasks
WHERE tenant = :tenant AND idempotency_key IN (SELECT value FROM json_each(:keys));

-- get_task --
-- One task of a tenant.
SELECT * FROM tasks WHERE tenant = :tenant AND task_id = :task_id;

-- lock_receipt_tasks --
-- The tasks that receipts write to or whose obligations they name (the write lock is already
-- held), then one more row, all NULL but found_parent_ids: which of the named parents exist in
-- the tenant. The parents travel once, not on every task's row.
SELECT t.*, NULL AS found_parent_ids
FROM tasks t
WHERE t.tenant = :tenant
  AND (t.task_id IN (SELECT value FROM json_each(:task_ids))
       OR t.obligation_receipt_id IN (SELECT value FROM json_each(:ids)))
UNION ALL
SELECT t.*,
       (SELECT json_group_array(p.receipt_id) FROM receipts p
        WHERE p.tenant = :tenant
          AND p.receipt_id IN (SELECT value FROM json_each(:ids)))
FROM (SELECT 1) AS one LEFT JOIN tasks t ON 0;

-- list_tasks --
-- A page of tasks in task_id order, which is creation order (task ids are UUIDv7, made by
-- AsyncGate), through the primary key; state is the lazily evaluated state.
SELECT * FROM tasks
WHERE tenant = :tenant
  AND (:type IS NULL OR type = :type)
  AND (:state IS NULL OR
       (CASE WHEN state = 'ACTIVE' AND lease_expires_at <= :now THEN 'PENDING' ELSE state END) = :state)
  AND (:after_id IS NULL OR task_id > :after_id)
ORDER BY task_id
LIMIT :limit;

-- claim_candidates --
-- Claimable tasks in priority then age order: ACTIVE ones whose lease expired (through
-- tasks_leased) and PENDING ones (through tasks_pending).
SELECT * FROM tasks
WHERE tenant = :tenant AND task_id IN (
    SELECT task_id FROM (
        SELECT task_id FROM tasks
        WHERE tenant = :tenant AND state = 'ACTIVE' AND lease_expires_at <= :now
          AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
        ORDER BY priority DESC, created_at, task_id
        LIMIT :limit)
    UNION ALL
    SELECT task_id FROM (
        SELECT task_id FROM tasks
        WHERE tenant = :tenant AND state = 'PENDING'
          AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
        ORDER BY priority DESC, created_at, task_id
        LIMIT :limit))
ORDER BY priority DESC, created_at, task_id
LIMIT :limit;

-- grant_leases --
-- Make a lease its task's current one, and keep the lease's own record (so that an old lease
-- id answers 409 rather than 404); run for every row by ``many``.
UPDATE tasks
SET state = 'ACTIVE', lease_id = :lease_id, lease_worker = :worker,
    lease_expires_at = :expires_at, lease_generation = :generation, updated_at = :now
WHERE tenant = :tenant AND task_id = :task_id;
INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at, expires_at)
VALUES (:tenant, :lease_id, :task_id, :generation, :worker, :now, :expires_at);

-- get_lease --
-- A lease with its task's current lease, to tell current from superseded.
SELECT l.lease_id, l.task_id, l.generation, l.worker, l.expires_at, l.released_at,
       t.lease_id AS current_lease_id, t.state AS task_state, t.lease_expires_at
FROM leases l JOIN tasks t ON t.tenant = l.tenant AND t.task_id = l.task_id
WHERE l.tenant = :tenant AND l.lease_id = :lease_id;

-- renew_lease --
-- Extend the current lease.
UPDATE tasks SET lease_expires_at = :expires_at, updated_at = :now
WHERE tenant = :tenant AND task_id = :task_id AND lease_id = :lease_id;

-- renew_lease_record --
-- Keep the lease record's expiry in step with the task.
UPDATE leases SET expires_at = :expires_at WHERE tenant = :tenant AND lease_id = :lease_id;

-- release_lease --
-- Give up the current lease: the task is claimable again, with no failure recorded.
UPDATE tasks
SET state = 'PENDING', lease_id = NULL, lease_worker = NULL, lease_expires_at = NULL,
    updated_at = :now
WHERE tenant = :tenant AND task_id = :task_id AND lease_id = :lease_id;

-- end_lease_record --
-- Mark a lease record released, by a release only: a lease whose task a terminal receipt
-- ended is over with its task (terminal for good), which that receipt records.
UPDATE leases SET released_at = :now
WHERE tenant = :tenant AND lease_id = :lease_id AND released_at IS NULL;

-- insert_receipt --
-- Append one receipt to the ledger.
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
                      parent_receipt_ids, stripped_parent_receipt_ids, body, artifacts,
                      delivery_proof, content_hash, created_at)
VALUES (:tenant, :receipt_id, :type, :task_id, :from_principal, :to_principal, :lease_id,
        :parent_receipt_ids, :stripped_parent_receipt_ids, :body, :artifacts,
        :delivery_proof, :content_hash, :created_at);

-- append_leased_receipt --
-- Write a receipt only under the task's current unexpired lease, with every parent present;
-- return what the request did not know (receipts.merge_written builds the rest).
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
                      parent_receipt_ids, stripped_parent_receipt_ids, body, artifacts,
                      delivery_proof, content_hash, created_at)
SELECT :tenant, :receipt_id, :type, t.task_id, :from_principal, t.principal, :lease_id,
       :parent_receipt_ids, NULL, :body, :artifacts, :delivery_proof, :content_hash, :now
FROM tasks t
WHERE t.tenant = :tenant AND t.task_id = :task_id AND t.lease_id = :lease_id
  AND t.state = 'ACTIVE' AND t.lease_expires_at > :now
  AND json_array_length(:parent_receipt_ids) = (
      SELECT count(*) FROM receipts p
      WHERE p.tenant = :tenant
        AND p.receipt_id IN (SELECT value FROM json_each(:parent_receipt_ids)))
ON CONFLICT DO NOTHING
RETURNING tenant, receipt_id, content_hash, from_principal, to_principal;

-- get_receipt --
-- One receipt of a tenant.
SELECT * FROM receipts WHERE tenant = :tenant AND receipt_id = :receipt_id;

-- apply_receipt_effects --
-- What a transaction's receipts did to a task they touched (one row per task): its new state,
-- its lease ended, its obligation closed (if still open); run for every row by ``many``.
-- A lease ended this way keeps its record as it was: it is over with its task, terminal for
-- good, and the receipt records that (released_at records releases only).
UPDATE tasks
SET state = COALESCE(:state, state),
    lease_id = CASE WHEN :end_lease_id IS NULL THEN lease_id END,
    lease_worker = CASE WHEN :end_lease_id IS NULL THEN lease_worker END,
    lease_expires_at = CASE WHEN :end_lease_id IS NULL THEN lease_expires_at END,
    obligation_open = obligation_open AND :closed_by IS NULL,
    obligation_closed_by = CASE WHEN obligation_open AND :closed_by IS NOT NULL
                                THEN :closed_by ELSE obligation_closed_by END,
    updated_at = :now
WHERE tenant = :tenant AND task_id = :task_id;

-- obligations_closed_by --
-- Which of the given obligations a receipt closed (for an idempotent replay).
SELECT obligation_receipt_id FROM tasks
WHERE tenant = :tenant AND obligation_closed_by = :closed_by
  AND obligation_receipt_id IN (SELECT value FROM json_each(:ids));

-- list_receipts --
-- A page of the ledger in (created_at, receipt_id) order.
SELECT * FROM receipts
WHERE tenant = :tenant
  AND (:task_id IS NULL OR task_id = :task_id)
  AND (:type IS NULL OR type = :type)
  AND (:type_prefix IS NULL OR substr(type, 1, length(:type_prefix)) = :type_prefix)
  AND (:since IS NULL OR created_at >= :since)
  AND (:until IS NULL OR created_at < :until)
  AND (:after_created_at IS NULL OR (created_at, receipt_id) > (:after_created_at, :after_id))
ORDER BY created_at, receipt_id
LIMIT :limit;

-- open_obligations --
-- Open obligations, oldest first, through the partial index of open tasks only. The obligation
-- receipt follows from its task row (views.obligation_receipt): the ledger is not read at all.
SELECT obligation_receipt_id, task_id, created_by, principal, type, priority, created_at
FROM tasks
WHERE tenant = :tenant AND obligation_open = 1
  AND (:after_created_at IS NULL OR (created_at, task_id) > (:after_created_at, :after_id))
ORDER BY created_at, task_id
LIMIT coalesce(:limit, -1);

-- obligation_cursor --
-- The keyset position of an obligation id.
SELECT created_at, task_id AS id FROM tasks
WHERE tenant = :tenant AND obligation_receipt_id = :id;

-- task_cursor --
-- The keyset position of a task id.
SELECT created_at, task_id AS id FROM tasks WHERE tenant = :tenant AND task_id = :id;

-- receipt_cursor --
-- The keyset position of a receipt id.
SELECT created_at, receipt_id AS id FROM receipts WHERE tenant = :tenant AND receipt_id = :id;

-- prunable_tasks --
-- Tasks whose obligation is closed and whose last activity is older than the cutoff.
SELECT tenant, task_id FROM tasks
WHERE obligation_open = 0 AND updated_at < :cutoff
LIMIT :limit;

-- prune_receipts --
-- Delete the receipts of a tenant's prunable tasks (re-checked: obligation closed, task idle).
DELETE FROM receipts
WHERE tenant = :tenant AND task_id IN (
    SELECT t.task_id FROM tasks t
    WHERE t.tenant = :tenant AND t.task_id IN (SELECT value FROM json_each(:task_ids))
      AND t.obligation_open = 0 AND t.updated_at < :cutoff);

-- prune_leases --
-- Delete the lease records of a tenant's prunable tasks.
DELETE FROM leases
WHERE tenant = :tenant AND task_id IN (
    SELECT t.task_id FROM tasks t
    WHERE t.tenant = :tenant AND t.task_id IN (SELECT value FROM json_each(:task_ids))
      AND t.obligation_open = 0 AND t.updated_at < :cutoff);

-- prune_tasks --
-- Delete a tenant's prunable tasks.
DELETE FROM tasks
WHERE tenant = :tenant AND task_id IN (SELECT value FROM json_each(:task_ids))
  AND obligation_open = 0 AND updated_at < :cutoff;

-- count_tasks --
-- Used by /v1/health to prove the database answers.
SELECT 1 AS ok;

-- notify_tasks --
-- Nothing to send: waiting claims share this process and are woken by tasks_created().
SELECT :tenant AS tenant;
