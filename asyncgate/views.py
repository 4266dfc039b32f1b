"""Rows as the API shows them. Lazily evaluated lease expiry is applied here, in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asyncgate.storage import Row
from asyncgate.termination import OBLIGATION


def lease_is_live(task: Row, now: datetime) -> bool:
    expires = task.get("lease_expires_at")
    return task["state"] == "ACTIVE" and expires is not None and expires > now


def effective_state(task: Row, now: datetime) -> str:
    """An ACTIVE task whose lease has expired reads as PENDING (lost authority, not failure)."""
    if task["state"] == "ACTIVE" and not lease_is_live(task, now):
        return "PENDING"
    return task["state"]


def task_view(task: Row, now: datetime) -> dict[str, Any]:
    live = lease_is_live(task, now)
    return {
        "task_id": task["task_id"],
        "type": task["type"],
        "payload": task["payload"],
        "principal": task["principal"],
        "created_by": task["created_by"],
        "priority": task["priority"],
        "idempotency_key": task["idempotency_key"],
        "state": effective_state(task, now),
        "lease": {
            "lease_id": task["lease_id"],
            "worker": task["lease_worker"],
            "expires_at": task["lease_expires_at"],
            "lease_generation": task["lease_generation"],
        }
        if live
        else None,
        "lease_generation": task["lease_generation"],
        "obligation_receipt_id": task["obligation_receipt_id"],
        "obligation_open": bool(task["obligation_open"]),
        "created_at": task["created_at"],
        "updated_at": task["updated_at"],
    }


def receipt_view(receipt: Row) -> dict[str, Any]:
    view = {
        "receipt_id": receipt["receipt_id"],
        "type": receipt["type"],
        "task_id": receipt["task_id"],
        "from_principal": receipt["from_principal"],
        "to_principal": receipt["to_principal"],
        "lease_id": receipt["lease_id"],
        "parent_receipt_ids": receipt["parent_receipt_ids"],
        "body": receipt["body"],
        "artifacts": receipt["artifacts"],
        "delivery_proof": receipt["delivery_proof"],
        "created_at": receipt["created_at"],
    }
    if receipt.get("stripped_parent_receipt_ids") is not None:
        view["stripped_parent_receipt_ids"] = receipt["stripped_parent_receipt_ids"]
    return view


def obligation_receipt(task: Row) -> dict[str, Any]:
    """The ``task.assigned`` receipt of a task: every field follows from the task row.

    The ledger stores exactly this when the task is created, and the open-obligation dump
    builds it from the task row alone, so the dump never reads the (much larger) ledger.
    """
    return {
        "receipt_id": task["obligation_receipt_id"],
        "type": OBLIGATION,
        "task_id": task["task_id"],
        "from_principal": task["created_by"],
        "to_principal": task["principal"],
        "lease_id": None,
        "parent_receipt_ids": [],
        "body": {"task_type": task["type"], "priority": task["priority"]},
        "artifacts": [],
        "delivery_proof": None,
        "created_at": task["created_at"],
    }
