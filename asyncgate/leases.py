"""Granting leases: one claim's work inside the caller's transaction. Nothing here commits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from asyncgate import receipts, termination
from asyncgate.ids import new_id
from asyncgate.settings import Identity
from asyncgate.storage import Tx
from asyncgate.views import receipt_view, task_view


async def claim_once(
    tx: Tx,
    now: datetime,
    identity: Identity,
    worker: str,
    types: list[str] | None,
    max_tasks: int,
    ttl_seconds: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Lease up to ``max_tasks`` claimable tasks to ``worker``; returns (grants, anomalies).

    Taking over an expired lease writes ``system.anomaly.lease_expired`` beside the grant.
    """
    tenant = identity.tenant
    candidates = await tx.all(
        "claim_candidates", tenant=tenant, now=now, types=types, limit=max_tasks
    )
    if not candidates:
        return [], []
    expires_at = now + timedelta(seconds=ttl_seconds)
    grants, anomalies, granted = [], [], []
    for task in candidates:
        grant = {
            "tenant": tenant,
            "task_id": task["task_id"],
            "lease_id": new_id(),
            "worker": worker,
            "expires_at": expires_at,
            "generation": task["lease_generation"] + 1,
            "now": now,
        }
        grants.append(grant)
        if task["state"] == "ACTIVE":
            # Taking over an expired lease is recorded, never silently absorbed.
            anomalies.append(
                receipts.anomaly_row(
                    tenant,
                    new_id(),
                    termination.LEASE_EXPIRED,
                    task,
                    [task["obligation_receipt_id"]],
                    {
                        "lease_id": task["lease_id"],
                        "worker": task["lease_worker"],
                        "expired_at": task["lease_expires_at"].isoformat(),
                        "lease_generation": task["lease_generation"],
                        "taken_over_by": worker,
                    },
                    now,
                )
            )
        claimed = {
            **task,
            "state": "ACTIVE",
            "lease_id": grant["lease_id"],
            "lease_worker": worker,
            "lease_expires_at": expires_at,
            "lease_generation": grant["generation"],
            "updated_at": now,
        }
        granted.append(
            {
                "lease_id": grant["lease_id"],
                "lease_generation": grant["generation"],
                "expires_at": expires_at,
                "task": task_view(claimed, now),
            }
        )
    await tx.many("grant_leases", grants, tenant=tenant)
    await tx.many("insert_receipt", anomalies)
    return granted, [receipt_view(row) for row in anomalies]


@dataclass(frozen=True)
class Claim:
    """One claim request, as ``claim_at_once`` joins it with others of its tenant and types."""

    worker: str
    max_tasks: int
    ttl_seconds: int


async def claim_at_once(
    tx: Tx, now: datetime, tenant: str, types: list[str] | None, claims: list[Claim]
) -> list[list[dict[str, Any]]] | None:
    """``claim_once`` for several claims in one statement, for dialects with the
    ``claim_at_once`` fast path; returns each claim's grants, in order.

    Each claim gets ``max_tasks`` slots, numbered in the order of ``claims``; the statement
    fills the slots with candidates in priority order, so the first claim gets the first
    tasks. ``None`` means a candidate's lease had expired: taking it over writes an anomaly,
    which only the general path does, so nothing was written and each claim runs
    ``claim_once``.
    """
    slots: list[dict[str, Any]] = []
    owners: dict[str, tuple[int, int]] = {}
    for index, claim in enumerate(claims):
        expires_at = now + timedelta(seconds=claim.ttl_seconds)
        for _ in range(claim.max_tasks):
            lease_id = new_id()
            owners[lease_id] = (len(slots), index)
            slots.append(
                {
                    "slot": len(slots) + 1,
                    "lease_id": lease_id,
                    "worker": claim.worker,
                    "expires_at": expires_at,
                }
            )
    rows = await tx.many_returning(
        "claim_at_once", slots, tenant=tenant, types=types, limit=len(slots), now=now
    )
    if not all(row["granted"] for row in rows):
        return None
    grants: list[list[dict[str, Any]]] = [[] for _ in claims]
    for row in sorted(rows, key=lambda row: owners[row["lease_id"]]):
        grants[owners[row["lease_id"]][1]].append(
            {
                "lease_id": row["lease_id"],
                "lease_generation": row["lease_generation"],
                "expires_at": row["lease_expires_at"],
                "task": task_view(row, now),
            }
        )
    return grants
