-- AsyncGate schema, SQLite dialect.
-- Timestamps are fixed-width RFC 3339 text (YYYY-MM-DDTHH:MM:SS.ffffffZ), so text order is time order.
-- JSON columns and id lists are compact JSON text.

CREATE TABLE tasks (
    tenant                TEXT    NOT NULL,
    task_id               TEXT    NOT NULL,
    type                  TEXT    NOT NULL,
    payload               TEXT    NOT NULL,
    principal             TEXT    NOT NULL,
    created_by            TEXT    NOT NULL,
    priority              INTEGER NOT NULL,
    idempotency_key       TEXT,
    request_hash          TEXT    NOT NULL,
    state                 TEXT    NOT NULL,
    lease_id              TEXT,
    lease_worker          TEXT,
    lease_expires_at      TEXT,
    lease_generation      INTEGER NOT NULL DEFAULT 0,
    obligation_receipt_id TEXT    NOT NULL,
    obligation_open       INTEGER NOT NULL DEFAULT 1,
    obligation_closed_by  TEXT,
    created_at            TEXT    NOT NULL,
    updated_at            TEXT    NOT NULL,
    PRIMARY KEY (tenant, task_id)
) WITHOUT ROWID;

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_by_age ON tasks (tenant, created_at, task_id);
-- Only claimable rows (PENDING, or ACTIVE whose lease may have expired), in claim order.
CREATE INDEX tasks_claimable ON tasks (tenant, priority DESC, created_at, task_id)
    WHERE state IN ('PENDING', 'ACTIVE');
-- Only open obligations: the bootstrap dump costs what is open, not what the ledger holds.
CREATE INDEX tasks_open_obligations ON tasks (tenant, created_at, task_id)
    WHERE obligation_open = 1;
CREATE INDEX tasks_closed_by_age ON tasks (updated_at) WHERE obligation_open = 0;

CREATE TABLE leases (
    tenant      TEXT    NOT NULL,
    lease_id    TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    worker      TEXT    NOT NULL,
    granted_at  TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL,
    released_at TEXT,
    PRIMARY KEY (tenant, lease_id)
) WITHOUT ROWID;
CREATE INDEX leases_by_task ON leases (tenant, task_id);

CREATE TABLE receipts (
    tenant                      TEXT NOT NULL,
    receipt_id                  TEXT NOT NULL,
    type                        TEXT NOT NULL,
    task_id                     TEXT NOT NULL,
    from_principal              TEXT NOT NULL,
    to_principal                TEXT NOT NULL,
    lease_id                    TEXT,
    parent_receipt_ids          TEXT NOT NULL,
    stripped_parent_receipt_ids TEXT,
    body                        TEXT NOT NULL,
    artifacts                   TEXT NOT NULL,
    delivery_proof              TEXT,
    content_hash                TEXT NOT NULL,
    created_at                  TEXT NOT NULL,
    PRIMARY KEY (tenant, receipt_id)
) WITHOUT ROWID;
CREATE INDEX receipts_by_time ON receipts (tenant, created_at, receipt_id);
CREATE INDEX receipts_by_task ON receipts (tenant, task_id, created_at, receipt_id);
CREATE INDEX receipts_by_type ON receipts (tenant, type, created_at, receipt_id);

-- Receipts are immutable: the database refuses to change them.
CREATE TRIGGER receipts_immutable BEFORE UPDATE ON receipts
BEGIN
    SELECT RAISE(ABORT, 'receipts are immutable');
END;
