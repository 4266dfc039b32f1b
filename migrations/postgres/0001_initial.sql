-- AsyncGate schema, PostgreSQL dialect (14+).
-- Ids are uuid, id lists uuid[], JSON columns jsonb, times timestamptz.
-- `asyncgate migrate` runs this file in one transaction under an advisory lock.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    tenant                text        NOT NULL,
    task_id               uuid        NOT NULL,
    type                  text        NOT NULL,
    payload               jsonb       NOT NULL,
    principal             text        NOT NULL,
    created_by            text        NOT NULL,
    priority              integer     NOT NULL,
    idempotency_key       text,
    request_hash          text        NOT NULL,
    state                 text        NOT NULL
        CHECK (state IN ('PENDING', 'ACTIVE', 'COMPLETED', 'FAILED', 'CANCELLED')),
    lease_id              uuid,
    lease_worker          text,
    lease_expires_at      timestamptz,
    lease_generation      integer     NOT NULL DEFAULT 0,
    obligation_receipt_id uuid        NOT NULL,
    obligation_open       boolean     NOT NULL DEFAULT true,
    obligation_closed_by  uuid,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant, task_id)
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_by_age ON tasks (tenant, created_at, task_id);
CREATE UNIQUE INDEX tasks_by_obligation ON tasks (tenant, obligation_receipt_id);
-- Only claimable rows (PENDING, or ACTIVE whose lease may have expired), in claim order:
-- terminal tasks, however many, are never visited by a claim.
CREATE INDEX tasks_claimable ON tasks (tenant, priority DESC, created_at, task_id)
    WHERE state IN ('PENDING', 'ACTIVE');
-- Only open obligations: the bootstrap dump costs what is open, not what the ledger holds.
CREATE INDEX tasks_open_obligations ON tasks (tenant, created_at, task_id)
    WHERE obligation_open;
-- Open obligations per tenant are estimated from this, not from two independent guesses.
CREATE STATISTICS tasks_open_by_tenant (mcv) ON tenant, obligation_open FROM tasks;
-- Retention looks only at closed tasks.
CREATE INDEX tasks_closed_by_age ON tasks (updated_at) WHERE NOT obligation_open;

CREATE TABLE leases (
    tenant      text        NOT NULL,
    lease_id    uuid        NOT NULL,
    task_id     uuid        NOT NULL,
    generation  integer     NOT NULL,
    worker      text        NOT NULL,
    granted_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    released_at timestamptz,
    PRIMARY KEY (tenant, lease_id)
);
CREATE INDEX leases_by_task ON leases (tenant, task_id);

CREATE TABLE receipts (
    tenant                      text        NOT NULL,
    receipt_id                  uuid        NOT NULL,
    type                        text        NOT NULL,
    task_id                     uuid        NOT NULL,
    from_principal              text        NOT NULL,
    to_principal                text        NOT NULL,
    lease_id                    uuid,
    parent_receipt_ids          uuid[]      NOT NULL,
    stripped_parent_receipt_ids uuid[],
    body                        jsonb       NOT NULL,
    artifacts                   jsonb       NOT NULL,
    delivery_proof              jsonb,
    content_hash                text        NOT NULL,
    created_at                  timestamptz NOT NULL,
    PRIMARY KEY (tenant, receipt_id)
);
CREATE INDEX receipts_by_time ON receipts (tenant, created_at, receipt_id);
CREATE INDEX receipts_by_task ON receipts (tenant, task_id, created_at, receipt_id);
CREATE INDEX receipts_by_type ON receipts (tenant, type, created_at, receipt_id);
-- "Which receipts name this one as a parent?" is an indexed lookup (parent_receipt_ids @> ARRAY[id]),
-- so the termination evidence is an indexed EXISTS, never a ledger scan. fastupdate is off: a
-- receipt names few parents, and lookups then never scan a pending list that grows with writes.
CREATE INDEX receipts_parents ON receipts USING gin (parent_receipt_ids) WITH (fastupdate = off);

-- Receipts are immutable: the database refuses to change them (retention deletes whole rows).
CREATE FUNCTION asyncgate_receipts_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'receipts are immutable' USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER receipts_immutable BEFORE UPDATE ON receipts
    FOR EACH ROW EXECUTE FUNCTION asyncgate_receipts_immutable();
