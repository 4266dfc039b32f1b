-- insert_tasks --
-- New tasks with their obligation (task.assigned) receipts, and a hint to waiting claims, for
-- every row in one statement: ``many`` sends the rows as one JSON recordset.
WITH r AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS r(
        tenant text, task_id uuid, type text, payload jsonb, principal text, created_by text,
        priority integer, idempotency_key text, request_hash text, obligation_receipt_id uuid,
        created_at timestamptz)
), tasks_in AS (
    INSERT INTO tasks (tenant, task_id, type, payload, principal, created_by, priority,
                       idempotency_key, request_hash, state, lease_generation,
                       obligation_receipt_id, obligation_open, created_at, updated_at)
    SELECT tenant, task_id, type, payload, principal, created_by, priority, idempotency_key,
           request_hash, 'PENDING', 0, obligation_receipt_id, true, created_at, created_at
    FROM r
), obligations_in AS (
    -- The same receipt as views.obligation_receipt builds from the task row.
    INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                          lease_id, parent_receipt_ids, stripped_parent_receipt_ids, body,
                          artifacts, delivery_proof, content_hash, created_at)
    SELECT tenant, obligation_receipt_id, 'task.assigned', task_id, created_by, principal, NULL,
           '{}', NULL, jsonb_build_object('task_type', type, 'priority', priority), '[]', NULL,
           request_hash, created_at
    FROM r
)
SELECT pg_notify('asyncgate_tasks', tenant) FROM (SELECT DISTINCT tenant FROM r) AS tenants;

-- tasks_by_idempotency_keys --
-- The tasks that any of the given idempotency keys already created.
SELECT * FROM tasks WHERE tenant = %(tenant)s AND idempotency_key = ANY(%(keys)s::text[]);

-- get_task --
-- One task of a tenant.
SELECT * FROM tasks WHERE tenant = %(tenant)s AND task_id = %(task_id)s::uuid;

-- lock_receipt_tasks --
-- The tasks that receipts write to or whose obligations they name, locked until the
-- transaction ends (in task_id order, against deadlocks), then one more row, all NULL but
-- found_parent_ids: which of the named parents exist in the tenant. One round trip for
-- everything a receipt write reads; the parents travel once, not on every task's row (a
-- batch of 100 parsed 10,000 ids).
WITH locked AS (
    SELECT t.* FROM tasks t
    -- One array of task ids, so the rows are fetched by primary key: an OR of the two
    -- conditions could be planned as a scan of the tenant's tasks.
    WHERE t.tenant = %(tenant)s
      AND t.task_id = ANY(ARRAY(
          SELECT unnest(%(task_ids)s::uuid[])
          UNION
          -- A task's obligation is its task.assigned receipt (see migration 0004).
          SELECT o.task_id FROM receipts o
          WHERE o.tenant = %(tenant)s AND o.receipt_id = ANY(%(ids)s::uuid[])
            AND o.type = 'task.assigned'))
    ORDER BY t.task_id
    FOR UPDATE OF t
)
SELECT locked.*, NULL::uuid[] AS found_parent_ids FROM locked
UNION ALL
SELECT (NULL::tasks).*,
       ARRAY(SELECT p.receipt_id FROM receipts p
             WHERE p.tenant = %(tenant)s AND p.receipt_id = ANY(%(ids)s::uuid[]));

-- list_tasks --
-- A page of tasks in task_id order, which is creation order (task ids are UUIDv7, made by
-- AsyncGate), through the primary key; state is the lazily evaluated state.
SELECT * FROM tasks
WHERE tenant = %(tenant)s
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
  AND (%(state)s::text IS NULL OR
       (CASE WHEN state = 'ACTIVE' AND lease_expires_at <= %(now)s::timestamptz
             THEN 'PENDING' ELSE state END) = %(state)s::text)
  AND (%(after_id)s::uuid IS NULL OR task_id > %(after_id)s::uuid)
ORDER BY task_id
LIMIT %(limit)s;

-- claim_candidates --
-- Claimable tasks in priority then age order, locked: ACTIVE ones whose lease expired (through
-- tasks_leased) and PENDING ones (through tasks_pending), type filter applied before locking.
-- Rows another claim holds are skipped, so concurrent claimers never wait or collide. The
-- locked rows are returned as they are: reading them again by task_id could go through a scan
-- of the tenant's tasks, when the planner misjudges the tenant's size.
WITH expired AS (
    SELECT * FROM tasks
    WHERE tenant = %(tenant)s AND state = 'ACTIVE' AND lease_expires_at <= %(now)s::timestamptz
      AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
    ORDER BY priority DESC, created_at, task_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), pending AS (
    SELECT * FROM tasks
    WHERE tenant = %(tenant)s AND state = 'PENDING'
      AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
    ORDER BY priority DESC, created_at, task_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT * FROM expired
UNION ALL
SELECT * FROM pending
ORDER BY priority DESC, created_at, task_id
LIMIT %(limit)s;

-- grant_leases --
-- Make each row's lease its task's current one, and keep the lease's own record (so that an
-- old lease id answers 409 rather than 404); rows are one JSON recordset. The tasks are found
-- by primary key through one array of ids: a plain join with the rows was planned from the
-- tenant's estimate (0.5 % of the table), as a scan of every task.
WITH r AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS r(
        tenant text, task_id uuid, lease_id uuid, worker text, expires_at timestamptz,
        generation integer, now timestamptz)
), granted AS (
    UPDATE tasks t
    SET state = 'ACTIVE', lease_id = r.lease_id, lease_worker = r.worker,
        lease_expires_at = r.expires_at, lease_generation = r.generation, updated_at = r.now
    FROM r
    WHERE t.tenant = %(tenant)s AND t.task_id = ANY(ARRAY(SELECT task_id FROM r))
      AND t.task_id = r.task_id
)
INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at, expires_at)
SELECT tenant, lease_id, task_id, generation, worker, now, expires_at FROM r;

-- get_lease --
-- A lease with its task's current lease, to tell current from superseded; the task row is
-- locked so a renew or release cannot interleave with a claim taking the task over.
SELECT l.lease_id, l.task_id, l.generation, l.worker, l.expires_at, l.released_at,
       t.lease_id AS current_lease_id, t.state AS task_state, t.lease_expires_at
FROM leases l JOIN tasks t ON t.tenant = l.tenant AND t.task_id = l.task_id
WHERE l.tenant = %(tenant)s AND l.lease_id = %(lease_id)s::uuid
FOR UPDATE OF t;

-- renew_lease --
-- Extend the current lease.
UPDATE tasks SET lease_expires_at = %(expires_at)s, updated_at = %(now)s
WHERE tenant = %(tenant)s AND task_id = %(task_id)s::uuid AND lease_id = %(lease_id)s::uuid;

-- renew_lease_record --
-- Keep the lease record's expiry in step with the task.
UPDATE leases SET expires_at = %(expires_at)s
WHERE tenant = %(tenant)s AND lease_id = %(lease_id)s::uuid;

-- release_lease --
-- Give up the current lease: the task is claimable again, with no failure recorded.
UPDATE tasks
SET state = 'PENDING', lease_id = NULL, lease_worker = NULL, lease_expires_at = NULL,
    updated_at = %(now)s
WHERE tenant = %(tenant)s AND task_id = %(task_id)s::uuid AND lease_id = %(lease_id)s::uuid;

-- end_lease_record --
-- Mark a lease record released, by a release only: a lease whose task a terminal receipt
-- ended is over with its task (terminal for good), which that receipt records.
UPDATE leases SET released_at = %(now)s
WHERE tenant = %(tenant)s AND lease_id = %(lease_id)s::uuid AND released_at IS NULL;

-- insert_receipt --
-- Append receipts to the ledger; rows are one JSON recordset.
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
                      parent_receipt_ids, stripped_parent_receipt_ids, body, artifacts,
                      delivery_proof, content_hash, created_at)
SELECT tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
       parent_receipt_ids, stripped_parent_receipt_ids, body, artifacts, delivery_proof,
       content_hash, created_at
FROM json_to_recordset(%(rows)s::json) AS r(
    tenant text, receipt_id uuid, type text, task_id uuid, from_principal text,
    to_principal text, lease_id uuid, parent_receipt_ids uuid[],
    stripped_parent_receipt_ids uuid[], body jsonb, artifacts jsonb, delivery_proof jsonb,
    content_hash text, created_at timestamptz);

-- append_leased_receipt --
-- Write receipts, each only under its task's current unexpired lease with every parent present;
-- rows are one JSON recordset (the ledger joins concurrent requests' rows: see coalesce.py).
-- FOR SHARE, in task order: concurrent reports on one task do not wait for each other, but a
-- terminal receipt (which locks the task FOR UPDATE) is waited for and then re-checked. A row
-- whose conditions fail, or whose receipt_id is taken, writes nothing and returns nothing.
-- Each row carries itself through the lock to the INSERT: a join between the two CTEs was
-- planned from their estimates (one row) as a nested loop comparing every pair. It returns
-- only what the request did not know, and what tells rows with one receipt_id apart
-- (receipts.merge_written builds the rest from the rows sent).
WITH r AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS r(
        tenant text, receipt_id uuid, type text, task_id uuid, from_principal text,
        lease_id uuid, parent_receipt_ids uuid[], body jsonb, artifacts jsonb,
        delivery_proof jsonb, content_hash text)
    ORDER BY task_id
), leased AS (
    -- Each task locked through its primary key alone (a task named twice is locked twice,
    -- which costs nothing more), then checked as locked: the lease conditions inside would
    -- let the planner scan every leased task instead.
    SELECT r.*, t.principal AS to_principal FROM r,
    LATERAL (
        SELECT lease_id, principal, state, lease_expires_at FROM tasks
        WHERE tenant = r.tenant AND task_id = r.task_id
        OFFSET 0  -- keeps the lease conditions out: the planner would push them in
        FOR SHARE
    ) AS t
    WHERE t.lease_id = r.lease_id AND t.state = 'ACTIVE' AND t.lease_expires_at > %(now)s
)
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
                      parent_receipt_ids, stripped_parent_receipt_ids, body, artifacts,
                      delivery_proof, content_hash, created_at)
SELECT tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
       parent_receipt_ids, NULL, body, artifacts, delivery_proof, content_hash, %(now)s
FROM leased
WHERE cardinality(parent_receipt_ids) = (
    SELECT count(*) FROM receipts p
    WHERE p.tenant = leased.tenant AND p.receipt_id = ANY(leased.parent_receipt_ids))
ON CONFLICT DO NOTHING
RETURNING tenant, receipt_id, content_hash, from_principal, to_principal;

-- get_receipt --
-- One receipt of a tenant.
SELECT * FROM receipts WHERE tenant = %(tenant)s AND receipt_id = %(receipt_id)s::uuid;

-- apply_receipt_effects --
-- What a transaction's receipts did to each task they touched (one row per task, locked by
-- lock_receipt_tasks): its new state, its lease ended, its obligation closed (if still open).
-- Tasks are found by primary key through one array of ids: a plain join with the rows was
-- planned from the tenant's estimate (0.5 % of the table), as a scan of the tenant's tasks.
-- A lease ended this way keeps its record as it was: it is over with its task, terminal for
-- good, and the receipt records that (released_at records releases only).
WITH r AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS r(
        task_id uuid, state text, end_lease_id uuid, closed_by uuid, now timestamptz)
)
UPDATE tasks t
SET state = COALESCE(r.state, t.state),
    lease_id = CASE WHEN r.end_lease_id IS NULL THEN t.lease_id END,
    lease_worker = CASE WHEN r.end_lease_id IS NULL THEN t.lease_worker END,
    lease_expires_at = CASE WHEN r.end_lease_id IS NULL THEN t.lease_expires_at END,
    obligation_open = t.obligation_open AND r.closed_by IS NULL,
    obligation_closed_by = CASE WHEN t.obligation_open AND r.closed_by IS NOT NULL
                                THEN r.closed_by ELSE t.obligation_closed_by END,
    updated_at = r.now
FROM r
WHERE t.tenant = %(tenant)s AND t.task_id = ANY(ARRAY(SELECT task_id FROM r))
  AND t.task_id = r.task_id;

-- obligations_closed_by --
-- Which of the given obligations a receipt closed (for an idempotent replay).
SELECT obligation_receipt_id FROM tasks
WHERE tenant = %(tenant)s
  AND task_id = ANY(ARRAY(
      SELECT o.task_id FROM receipts o
      WHERE o.tenant = %(tenant)s AND o.receipt_id = ANY(%(ids)s::uuid[])
        AND o.type = 'task.assigned'))
  AND obligation_closed_by = %(closed_by)s::uuid;

-- list_receipts --
-- A page of the ledger in (created_at, receipt_id) order.
SELECT * FROM receipts
WHERE tenant = %(tenant)s
  AND (%(task_id)s::uuid IS NULL OR task_id = %(task_id)s::uuid)
  AND (%(type)s::text IS NULL OR type = %(type)s::text)
  AND (%(type_prefix)s::text IS NULL OR starts_with(type, %(type_prefix)s::text))
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (created_at, receipt_id) > (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at, receipt_id
LIMIT %(limit)s;

-- open_obligations --
-- Open obligations, oldest first, through the partial index of open tasks only (LIMIT NULL is
-- no limit: the streamed dump). The obligation receipt follows from its task row
-- (views.obligation_receipt), so the ledger is not read at all: the cost follows what is open.
SELECT obligation_receipt_id, task_id, created_by, principal, type, priority, created_at
FROM tasks
WHERE tenant = %(tenant)s AND obligation_open
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (created_at, task_id) > (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY created_at, task_id
LIMIT %(limit)s;

-- obligation_cursor --
-- The keyset position of an obligation id.
SELECT t.created_at, t.task_id AS id
FROM receipts o JOIN tasks t ON t.tenant = o.tenant AND t.task_id = o.task_id
WHERE o.tenant = %(tenant)s AND o.receipt_id = %(id)s::uuid AND o.type = 'task.assigned';

-- task_cursor --
-- The keyset position of a task id.
SELECT created_at, task_id AS id FROM tasks WHERE tenant = %(tenant)s AND task_id = %(id)s::uuid;

-- receipt_cursor --
-- The keyset position of a receipt id.
SELECT created_at, receipt_id AS id FROM receipts
WHERE tenant = %(tenant)s AND receipt_id = %(id)s::uuid;

-- prunable_tasks --
-- Tasks whose obligation is closed and whose last activity is older than the cutoff, locked
-- (skipping any a writer holds) so no receipt lands on a task while it is being deleted.
SELECT tenant, task_id FROM tasks
WHERE NOT obligation_open AND updated_at < %(cutoff)s
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- prune_receipts --
-- Delete the receipts of a tenant's prunable tasks (re-checked: obligation closed, task idle).
DELETE FROM receipts
WHERE tenant = %(tenant)s AND task_id IN (
    SELECT t.task_id FROM tasks t
    WHERE t.tenant = %(tenant)s AND t.task_id = ANY(%(task_ids)s::uuid[])
      AND NOT t.obligation_open AND t.updated_at < %(cutoff)s);

-- prune_leases --
-- Delete the lease records of a tenant's prunable tasks.
DELETE FROM leases
WHERE tenant = %(tenant)s AND task_id IN (
    SELECT t.task_id FROM tasks t
    WHERE t.tenant = %(tenant)s AND t.task_id = ANY(%(task_ids)s::uuid[])
      AND NOT t.obligation_open AND t.updated_at < %(cutoff)s);

-- prune_tasks --
-- Delete a tenant's prunable tasks.
DELETE FROM tasks
WHERE tenant = %(tenant)s AND task_id = ANY(%(task_ids)s::uuid[])
  AND NOT obligation_open AND updated_at < %(cutoff)s;

-- count_tasks --
-- Used by /v1/health to prove the database answers.
SELECT 1 AS ok;

-- notify_tasks --
-- A hint, delivered at commit, that the tenant may have claimable tasks (see listener.py).
SELECT pg_notify('asyncgate_tasks', %(tenant)s);

-- claim_at_once --
-- Fast path (PostgreSQL only; see PostgresDialect.fast_paths): claims of one tenant and type
-- filter in one statement, when they take over no expired lease. Rows are one JSON recordset
-- of slots, one per task asked for, numbered in the order the claims came (concurrent claims
-- joined: see coalesce.py), each with its lease id, worker and expiry. The candidates are
-- claim_candidates', numbered in priority order; candidate n goes to slot n, with its lease
-- record. Every candidate comes back with `granted`: if any of them is a takeover (which must
-- write its anomaly), nothing is written and the ledger runs the general claim instead.
WITH slots AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS r(
        slot bigint, lease_id uuid, worker text, expires_at timestamptz)
), expired AS (
    SELECT task_id, state, priority, created_at FROM tasks
    WHERE tenant = %(tenant)s AND state = 'ACTIVE' AND lease_expires_at <= %(now)s::timestamptz
      AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
    ORDER BY priority DESC, created_at, task_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), pending AS (
    SELECT task_id, state, priority, created_at FROM tasks
    WHERE tenant = %(tenant)s AND state = 'PENDING'
      AND (%(types)s::text[] IS NULL OR type = ANY(%(types)s::text[]))
    ORDER BY priority DESC, created_at, task_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), candidates AS (
    -- The locked rows as they are: reading them again by task_id could go through a scan of
    -- the tenant's tasks, when the planner misjudges the tenant's size.
    SELECT task_id, state,
           row_number() OVER (ORDER BY priority DESC, created_at, task_id) AS slot
    FROM (
        SELECT * FROM expired UNION ALL SELECT * FROM pending
        ORDER BY priority DESC, created_at, task_id
        LIMIT %(limit)s
    ) AS first
), takeover AS (
    SELECT EXISTS (SELECT 1 FROM candidates WHERE state = 'ACTIVE') AS needed
), granted AS (
    UPDATE tasks t
    SET state = 'ACTIVE', lease_id = s.lease_id, lease_worker = s.worker,
        lease_expires_at = s.expires_at, lease_generation = t.lease_generation + 1,
        updated_at = %(now)s
    FROM candidates c JOIN slots s USING (slot)
    -- The candidates' ids as one array: the rows are fetched by primary key, never by a join
    -- that the planner could run as a scan of the tenant's tasks.
    WHERE t.tenant = %(tenant)s AND t.task_id = ANY(ARRAY(SELECT task_id FROM candidates))
      AND t.task_id = c.task_id AND NOT (SELECT needed FROM takeover)
    -- What the answer shows of a task (views.task_view), and no more: every byte comes back
    -- over the wire and is parsed again.
    RETURNING t.task_id, t.type, t.payload, t.principal, t.created_by, t.priority,
              t.idempotency_key, t.state, t.lease_id, t.lease_worker, t.lease_expires_at,
              t.lease_generation, t.obligation_receipt_id, t.obligation_open, t.created_at,
              t.updated_at
), leases_in AS (
    INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at, expires_at)
    SELECT %(tenant)s, lease_id, task_id, lease_generation, lease_worker, %(now)s,
           lease_expires_at
    FROM granted
)
SELECT *, true AS granted FROM granted
UNION ALL
SELECT t.task_id, t.type, t.payload, t.principal, t.created_by, t.priority, t.idempotency_key,
       t.state, t.lease_id, t.lease_worker, t.lease_expires_at, t.lease_generation,
       t.obligation_receipt_id, t.obligation_open, t.created_at, t.updated_at,
       false AS granted
FROM tasks t
WHERE t.tenant = %(tenant)s AND t.task_id = ANY(ARRAY(SELECT task_id FROM candidates))
  AND (SELECT needed FROM takeover);

-- settle_under_lease --
-- Fast path (PostgreSQL only; see PostgresDialect.fast_paths): terminating receipts in one
-- statement, in the common case: under the task's current unexpired lease, every parent
-- present, none of them another task's obligation, the receipt_id new, no anomaly to write. The
-- ledger has applied the truth table already (each row's new state, whether named obligations
-- close); here the task takes its state, its lease ends, and its obligation closes if named and
-- still open. Rows are one JSON recordset (concurrent requests' rows, or one batch: see
-- coalesce.py and Ledger.write_receipts), at most one per task. A row whose conditions fail
-- writes nothing and returns nothing: the ledger then runs the general path for it, which
-- tells why. A receipt_id taken concurrently fails the whole statement (a unique violation),
-- and each row then takes the general path.
-- Every write reads the one `task` CTE, which carries each row whole: a join between CTEs is
-- planned from their estimates (one row each), as a nested loop comparing every pair.
WITH r AS (
    SELECT DISTINCT ON (tenant, task_id) * FROM json_to_recordset(%(rows)s::json) AS r(
        tenant text, receipt_id uuid, type text, task_id uuid, from_principal text,
        lease_id uuid, parent_receipt_ids uuid[], body jsonb, artifacts jsonb,
        delivery_proof jsonb, content_hash text, state text, closes boolean, id_given boolean)
    ORDER BY tenant, task_id
), task AS (
    -- Each task locked through its primary key alone, in task order, then checked as locked:
    -- the lease conditions inside would let the planner scan every leased task instead.
    SELECT r.*, t.principal AS to_principal, t.obligation_receipt_id,
           t.obligation_open AND r.closes
               AND t.obligation_receipt_id = ANY(r.parent_receipt_ids) AS closes_own
    FROM r,
    LATERAL (
        SELECT principal, obligation_receipt_id, obligation_open, lease_id, state,
               lease_expires_at
        FROM tasks
        WHERE tenant = r.tenant AND task_id = r.task_id
        OFFSET 0  -- keeps the lease conditions out: the planner would push them in
        FOR UPDATE
    ) AS t
    WHERE t.lease_id = r.lease_id AND t.state = 'ACTIVE' AND t.lease_expires_at > %(now)s
      -- Every parent exists and none is another task's obligation (its task.assigned
      -- receipt). A lone parent that is the task's own obligation, as a worker's report
      -- usually names, is known from the locked row; others cost a primary-key probe each.
      AND (r.parent_receipt_ids = ARRAY[t.obligation_receipt_id]
           OR cardinality(r.parent_receipt_ids) = (
               SELECT count(*) FILTER (WHERE p.type <> 'task.assigned' OR p.task_id = r.task_id)
               FROM receipts p
               WHERE p.tenant = r.tenant AND p.receipt_id = ANY(r.parent_receipt_ids)))
      -- A receipt_id AsyncGate made is new; only one the client chose is looked up.
      AND (NOT r.id_given OR NOT EXISTS (
          SELECT 1 FROM receipts x WHERE x.tenant = r.tenant AND x.receipt_id = r.receipt_id))
), receipt AS (
    INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                          lease_id, parent_receipt_ids, stripped_parent_receipt_ids, body,
                          artifacts, delivery_proof, content_hash, created_at)
    SELECT tenant, receipt_id, type, task_id, from_principal, to_principal, lease_id,
           parent_receipt_ids, NULL, body, artifacts, delivery_proof, content_hash, %(now)s
    FROM task
), settled AS (
    UPDATE tasks t
    SET state = task.state, lease_id = NULL, lease_worker = NULL, lease_expires_at = NULL,
        obligation_open = t.obligation_open AND NOT task.closes_own,
        obligation_closed_by = CASE WHEN task.closes_own THEN task.receipt_id
                                    ELSE t.obligation_closed_by END,
        updated_at = %(now)s
    FROM task
    WHERE t.tenant = task.tenant AND t.task_id = task.task_id
)
-- What the request did not know of each receipt written (receipts.merge_written builds the
-- rest from the rows sent), and the obligation it closed.
SELECT tenant, receipt_id, content_hash, from_principal, to_principal,
       CASE WHEN closes_own THEN obligation_receipt_id END AS terminated_obligation
FROM task;
