"""Writing client receipts: fencing, parents, the truth table's decision, and the task's update.

Each function runs inside the caller's transaction; nothing here commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

import orjson

from asyncgate import termination
from asyncgate.errors import Problem, conflict, invalid, not_found
from asyncgate.ids import SYSTEM_PRINCIPAL, derived_id, fingerprint, new_id
from asyncgate.settings import Identity
from asyncgate.storage import Row, Tx
from asyncgate.views import lease_is_live, receipt_view

MAX_BODY_BYTES = 64 * 1024


@dataclass
class ReceiptResult:
    receipt: dict[str, Any]
    terminated: list[str]
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    replayed: bool = False
    # Set on results written in this transaction, to tell a replay later in a batch from reuse.
    content_hash: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "receipt": self.receipt,
            "terminated": self.terminated,
            "anomalies": [anomaly["receipt_id"] for anomaly in self.anomalies],
        }


def check_type(receipt_type: str, prefix: str = "") -> termination.Rule:
    """The rule for a type a client may write; 422 naming why (unknown or AsyncGate's own)."""
    rule = termination.rule_for(receipt_type)
    if rule is None:
        raise invalid(
            f"{prefix}type",
            f"unknown receipt type {receipt_type!r}; clients write "
            f"{', '.join(termination.CLIENT_TYPES)}",
            "unknown_receipt_type",
        )
    if not rule.client_may_write:
        raise invalid(
            f"{prefix}type",
            f"{receipt_type} is written by AsyncGate only",
            "reserved_receipt_type",
        )
    return rule


def check_request(spec: dict[str, Any], prefix: str = "") -> termination.Rule:
    """Rules that need no database: the receipt type, the body's size, the lease requirement."""
    rule = check_type(spec["type"], prefix)
    if len(orjson.dumps(spec["body"])) > MAX_BODY_BYTES:
        raise invalid(f"{prefix}body", "body is over 64 KiB as compact JSON", "body_too_large")
    if rule.requires_lease and not spec.get("lease_id"):
        raise invalid(f"{prefix}lease_id", f"{spec['type']} requires the current lease_id")
    return rule


def content_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": spec["type"],
        "task_id": spec["task_id"],
        "parent_receipt_ids": spec["parent_receipt_ids"],
        "lease_id": spec.get("lease_id"),
        "body": spec["body"],
        "artifacts": spec["artifacts"],
        "delivery_proof": spec.get("delivery_proof"),
    }


async def replay(
    tx: Tx, tenant: str, existing: Row, content_hash: str, prefix: str
) -> ReceiptResult:
    if existing["content_hash"] != content_hash:
        raise _reused_receipt_id(prefix)
    closed = await tx.all(
        "obligations_closed_by",
        tenant=tenant,
        ids=existing["parent_receipt_ids"],
        closed_by=existing["receipt_id"],
    )
    anomalies = []
    if existing["stripped_parent_receipt_ids"] is not None:
        anomaly = await tx.one(
            "get_receipt",
            tenant=tenant,
            receipt_id=derived_id(existing["receipt_id"], "locatability_missing"),
        )
        anomalies = [receipt_view(anomaly)] if anomaly else []
    return ReceiptResult(
        receipt_view(existing),
        sorted(row["obligation_receipt_id"] for row in closed),
        anomalies,
        replayed=True,
    )


def on_hot_path(spec: dict[str, Any]) -> bool:
    """Receipts that terminate nothing and need the current lease: started and progress."""
    rule = termination.rule_for(spec["type"])
    return (
        rule is not None
        and rule.client_may_write
        and rule.requires_lease
        and rule.terminates is termination.Terminates.NEVER
        and bool(spec.get("lease_id"))
    )


def append_row(identity: Identity, spec: dict[str, Any]) -> Row:
    """A hot-path receipt (see ``on_hot_path``) as a row of the ``append_leased_receipt``
    statement, which writes it only if the lease is the task's current unexpired one, every
    parent exists and the receipt_id is new. When the statement writes nothing, the caller
    runs ``write``, which finds out why and answers accordingly.
    """
    check_request(spec)
    return _leased_receipt(identity, spec)


def _leased_receipt(identity: Identity, spec: dict[str, Any]) -> Row:
    """The parameters the one-statement receipt writes share: the receipt as the client sent it."""
    return {
        "tenant": identity.tenant,
        "receipt_id": spec.get("receipt_id") or new_id(),
        "type": spec["type"],
        "task_id": spec["task_id"],
        "from_principal": identity.principal,
        "lease_id": spec["lease_id"],
        "parent_receipt_ids": spec["parent_receipt_ids"],
        "body": spec["body"],
        "artifacts": spec["artifacts"],
        "delivery_proof": spec.get("delivery_proof"),
        "content_hash": fingerprint(content_of(spec)),
    }


def settle_row(identity: Identity, spec: dict[str, Any]) -> Row | None:
    """A terminating receipt as a row of the ``settle_under_lease`` statement, with the truth
    table's decision made here, as in ``write``; ``None`` unless the receipt is one for it:
    written under a lease, moving the task to a terminal state, with no anomaly to write and
    nothing for ``check_request`` to refuse (``write`` then answers for it, and a batch's
    errors come in the batch's order).

    The statement applies the decision only if the lease is the task's current unexpired one,
    every parent exists, none of them is another task's obligation and the receipt_id is new.
    When it writes nothing, the caller runs ``write``, which finds out why and answers.
    """
    try:
        rule = check_request(spec)
    except Problem:
        return None
    state = termination.next_state(rule, "ACTIVE")
    if not spec.get("lease_id") or state not in termination.TERMINAL_STATES:
        return None
    decision = termination.decide(
        rule, spec["parent_receipt_ids"], spec["artifacts"], spec.get("delivery_proof")
    )
    if decision.anomaly is not None:
        return None
    return {
        **_leased_receipt(identity, spec),
        "state": state,
        "closes": decision.closes_named_obligations,
        # Only an id the client chose can be taken already: the statement looks up no other.
        "id_given": bool(spec.get("receipt_id")),
    }


# What a one-statement write returns of each receipt beside what the request did not know
# (to_principal, terminated_obligation): enough to tell apart two rows with one receipt_id, of
# which the statement wrote one.
WRITTEN_KEY = ("tenant", "receipt_id", "content_hash", "from_principal")
_written_key = itemgetter(*WRITTEN_KEY)


def merge_written(sent: list[Row], returned: list[Row], now: datetime) -> list[Row | None]:
    """Each sent row as the one-statement write stored it, or ``None`` if it wrote nothing.

    The statements return only the few columns the request could not know, rather than every
    column for the driver to parse back into what the request already holds: the rest, and
    ``created_at`` (the statement's ``now``), come from the row sent.
    """
    by_key = {_written_key(row): row for row in returned}
    merged: list[Row | None] = []
    for row in sent:
        # Popped, so that of two rows with one key only the first gets the row written.
        stored = by_key.pop(_written_key(row), None)
        merged.append(None if stored is None else {**row, **stored, "created_at": now})
    return merged


def written_at_once(row: Row) -> ReceiptResult:
    """The answer for a receipt that a one-statement write (append or settle) wrote."""
    closed = row.pop("terminated_obligation", None)
    return ReceiptResult(receipt_view(row), [closed] if closed else [])


@dataclass
class WriteSet:
    """One receipt transaction: the task rows it locked, and the writes it makes at its end.

    ``tasks`` holds the receipts' own tasks and the tasks whose obligations they name (the same
    row objects are indexed both ways), kept current as receipts are written, so later receipts
    of a batch see what earlier ones did; ``known`` holds the receipt ids that exist in the
    tenant. The writes are gathered here and sent by ``flush``: a batch of any size costs the
    same two statements.
    """

    tenant: str
    tasks: dict[str, Row]
    by_obligation: dict[str, Row]
    known: set[str]
    receipts: list[Row] = field(default_factory=list)
    # One row per task touched (see the dialects' apply_receipt_effects query).
    effects: dict[str, Row] = field(default_factory=dict)
    # Receipts written in this transaction by id, for a replay later in the same batch.
    written: dict[str, ReceiptResult] = field(default_factory=dict)

    def effect(self, task: Row, now: datetime) -> Row:
        return self.effects.setdefault(
            task["task_id"],
            {
                "task_id": task["task_id"],
                "state": None,
                "end_lease_id": None,
                "closed_by": None,
                "now": now,
            },
        )


async def lock(tx: Tx, tenant: str, specs: list[dict[str, Any]]) -> WriteSet:
    """Lock every task the receipts touch, and learn which parents exist: one query."""
    parent_ids = sorted({parent for spec in specs for parent in spec["parent_receipt_ids"]})
    task_ids = sorted({spec["task_id"] for spec in specs})
    rows = await tx.all("lock_receipt_tasks", tenant=tenant, task_ids=task_ids, ids=parent_ids)
    # One row is no task: it carries which parents exist.
    tasks = [row for row in rows if row["task_id"] is not None]
    [found] = [row["found_parent_ids"] for row in rows if row["task_id"] is None]
    return WriteSet(
        tenant=tenant,
        tasks={row["task_id"]: row for row in tasks},
        by_obligation={row["obligation_receipt_id"]: row for row in tasks},
        known=set(found),
    )


async def flush(tx: Tx, writes: WriteSet) -> None:
    """Send what the transaction's receipts wrote: the receipts, then their effects on tasks."""
    await tx.many("insert_receipt", writes.receipts)
    await tx.many("apply_receipt_effects", list(writes.effects.values()), tenant=writes.tenant)


async def write(
    tx: Tx,
    identity: Identity,
    spec: dict[str, Any],
    now: datetime,
    writes: WriteSet,
    prefix: str = "",
) -> ReceiptResult:
    """Append one client receipt and apply its effect, in the open transaction.

    ``writes`` comes from ``lock`` over every receipt of the transaction; what this receipt
    writes joins it, to be sent by ``flush`` before the transaction commits.
    """
    tenant = identity.tenant
    rule = check_request(spec, prefix)
    content_hash = fingerprint(content_of(spec))
    receipt_id = spec.get("receipt_id") or new_id()
    if spec.get("receipt_id"):
        earlier = writes.written.get(receipt_id)
        if earlier is not None:
            if earlier.content_hash != content_hash:
                raise _reused_receipt_id(prefix)
            return replace(earlier, replayed=True)
        existing = await tx.one("get_receipt", tenant=tenant, receipt_id=receipt_id)
        if existing is not None:
            return await replay(tx, tenant, existing, content_hash, prefix)

    parent_ids = spec["parent_receipt_ids"]
    task = writes.tasks.get(spec["task_id"])
    if task is None:
        raise not_found(f"task {spec['task_id']}", f"{prefix}task_id")
    if rule.requires_lease and task["state"] in termination.TERMINAL_STATES:
        raise conflict(
            "task_terminal",
            f"task is {task['state']}; {spec['type']} is refused on a terminal task",
            f"{prefix}type",
        )
    lease_id = spec.get("lease_id")
    if lease_id:
        await _fence(tx, tenant, task, lease_id, now, prefix)

    missing = set(parent_ids) - writes.known
    if missing:
        raise invalid(
            f"{prefix}parent_receipt_ids",
            f"parent receipts do not exist in this tenant: {', '.join(sorted(missing))}",
            "unknown_parent",
        )

    decision = termination.decide(rule, parent_ids, spec["artifacts"], spec.get("delivery_proof"))
    receipt = {
        "tenant": tenant,
        "receipt_id": receipt_id,
        "type": spec["type"],
        "task_id": task["task_id"],
        "from_principal": identity.principal,
        "to_principal": task["principal"],
        "lease_id": lease_id,
        "parent_receipt_ids": decision.parent_receipt_ids,
        "stripped_parent_receipt_ids": decision.stripped_parent_receipt_ids
        if decision.anomaly
        else None,
        "body": spec["body"],
        "artifacts": spec["artifacts"],
        "delivery_proof": spec.get("delivery_proof"),
        "content_hash": content_hash,
        "created_at": now,
    }
    rows = [receipt]
    if decision.anomaly:
        rows.append(
            anomaly_row(
                tenant,
                derived_id(receipt_id, "locatability_missing"),
                decision.anomaly,
                task,
                [receipt_id],
                {
                    "reason": "task.success carried no artifacts and no delivery_proof",
                    "stripped_parent_receipt_ids": decision.stripped_parent_receipt_ids,
                },
                # A microsecond after its cause, so the ledger's (created_at, id) order is causal.
                now + timedelta(microseconds=1),
            )
        )
    writes.receipts.extend(rows)
    writes.known.update(row["receipt_id"] for row in rows)

    if rule.next_state:
        new_state = termination.next_state(rule, task["state"])
        effect = writes.effect(task, now)
        effect["state"] = new_state
        if new_state in termination.TERMINAL_STATES and task["lease_id"] is not None:
            effect["end_lease_id"] = task["lease_id"]
            task.update(lease_id=None, lease_worker=None, lease_expires_at=None)
        task["state"] = new_state
    terminated: list[str] = []
    if decision.closes_named_obligations:
        # The obligations' rows are locked, so which of them are open is settled here.
        terminated = sorted(
            obligation
            for obligation in set(parent_ids)
            if (owner := writes.by_obligation.get(obligation)) and owner["obligation_open"]
        )
        for obligation in terminated:
            owner = writes.by_obligation[obligation]
            writes.effect(owner, now)["closed_by"] = receipt_id
            owner["obligation_open"] = False
    result = ReceiptResult(
        receipt_view(receipt),
        terminated,
        [receipt_view(row) for row in rows[1:]],
        content_hash=content_hash,
    )
    writes.written[receipt_id] = result
    return result


def _reused_receipt_id(prefix: str) -> Exception:
    return conflict(
        "idempotency_conflict",
        "receipt_id was already used with different content; choose a new receipt_id",
        f"{prefix}receipt_id",
    )


async def _fence(tx: Tx, tenant: str, task: Row, lease_id: str, now: datetime, prefix: str) -> None:
    """A receipt that names a lease is accepted only under the task's current, unexpired lease."""
    if task["lease_id"] == lease_id and lease_is_live(task, now):
        return
    if await tx.one("get_lease", tenant=tenant, lease_id=lease_id) is None:
        raise not_found(f"lease {lease_id}", f"{prefix}lease_id")
    raise conflict(
        "lease_lost",
        "this lease is no longer the task's current unexpired lease (expired, released or "
        "superseded); nothing was written",
        f"{prefix}lease_id",
    )


def anomaly_row(
    tenant: str,
    receipt_id: str,
    anomaly_type: str,
    task: Row,
    parents: list[str],
    body: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "receipt_id": receipt_id,
        "type": anomaly_type,
        "task_id": task["task_id"],
        "from_principal": SYSTEM_PRINCIPAL,
        "to_principal": task["principal"],
        "lease_id": None,
        "parent_receipt_ids": parents,
        "stripped_parent_receipt_ids": None,
        "body": body,
        "artifacts": [],
        "delivery_proof": None,
        "content_hash": fingerprint({"anomaly": receipt_id}),
        "created_at": now,
    }
