"""Query plans with their actual row counts, of both kinds the server may run.

psycopg prepares a statement on its fifth use; once the ledger is large enough
(asyncgate_postgres.PlanMode sets plan_cache_mode `auto`), the server may then keep one
generic plan for it, made without the parameter values, instead of planning each call for its
values. Either kind can run in production, so the plan tests check both:

- ``custom``: EXPLAIN ANALYZE of the statement with its values, as the first calls are planned;
- ``generic``: the statement prepared and run under ``plan_cache_mode = force_generic_plan``,
  its plan reported by auto_explain exactly as it ran.

Either way the statement runs (and writes, unless the caller rolls back).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Json

PLAN_KINDS = ("custom", "generic")

_AUTO_EXPLAIN = (
    "LOAD 'auto_explain'",
    "SET auto_explain.log_min_duration = 0",
    "SET auto_explain.log_analyze = on",
    "SET auto_explain.log_buffers = on",
    "SET auto_explain.log_verbose = on",
    "SET auto_explain.log_format = 'json'",
    "SET client_min_messages = log",
    "SET plan_cache_mode = force_generic_plan",
)
_RESET = ("RESET client_min_messages", "RESET auto_explain.log_min_duration")


def plan_nodes(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any], kind: str
) -> list[dict]:
    """Every node of the plan ``sql`` ran with, flattened."""
    if kind == "custom":
        [[explained]] = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params
        ).fetchone()
        root = explained["Plan"]
    else:
        root = _generic_plan(conn, sql, params)
    nodes, pending = [], [root]
    while pending:
        node = pending.pop()
        nodes.append(node)
        pending.extend(node.get("Plans", []))
    return nodes


def _generic_plan(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> dict:
    reported: list[str] = []

    def keep(diagnostic: psycopg.errors.Diagnostic) -> None:
        if (message := diagnostic.message_primary or "").startswith("duration:"):
            reported.append(message)

    with conn.cursor(row_factory=tuple_row) as cursor:
        [previous] = cursor.execute("SHOW plan_cache_mode").fetchone() or ["auto"]
    for statement in _AUTO_EXPLAIN:
        conn.execute(statement)
    conn.add_notice_handler(keep)
    try:
        conn.execute(sql, params, prepare=True)
    finally:
        # auto_explain reports as the portal closes, after the statement's own result: the
        # report is read with the next statement's.
        for statement in _RESET:
            conn.execute(statement)
        conn.execute(f"SET plan_cache_mode = {previous}")
        conn.remove_notice_handler(keep)
    assert reported, "auto_explain reported no plan"
    report = orjson.loads(reported[-1].split("plan:", 1)[1])
    # A generic plan compares with parameters ($1, $2...), never with the values themselves.
    assert re.search(r"\$\d", orjson.dumps(report["Plan"]).decode()), "planned for the values"
    return report["Plan"]


def hot_statement_params(tenant: str, now: datetime, batch: int = 10) -> dict[str, dict[str, Any]]:
    """Parameters for each statement a prepared, generic plan may serve on a hot path. The ids
    are new: a generic plan does not depend on them, and the statements then write nothing
    that matters (the caller rolls back)."""

    def new_id() -> str:
        return str(uuid.uuid4())

    task, lease, obligation = new_id(), new_id(), new_id()
    receipt = {
        "tenant": tenant, "receipt_id": new_id(), "type": "task.success", "task_id": task,
        "from_principal": "service:a", "lease_id": lease, "parent_receipt_ids": [obligation],
        "body": {}, "artifacts": [{"uri": "s3://x"}], "delivery_proof": None,
        "content_hash": "h", "state": "COMPLETED", "closes": True,
    }  # fmt: skip
    created = {
        "tenant": tenant, "task_id": new_id(), "type": "t", "payload": {},
        "principal": "service:a", "created_by": "service:a", "priority": 0,
        "idempotency_key": None, "request_hash": "h", "obligation_receipt_id": new_id(),
        "created_at": now,
    }  # fmt: skip
    slot = {"slot": 1, "lease_id": new_id(), "worker": "w", "expires_at": now}
    grant = {"tenant": tenant, "task_id": task, "lease_id": new_id(), "worker": "w",
             "expires_at": now, "generation": 1, "now": now}  # fmt: skip
    effect = {"tenant": tenant, "task_id": task, "state": "COMPLETED", "end_lease_id": lease,
              "closed_by": None, "now": now}  # fmt: skip
    claim = {"tenant": tenant, "types": None, "limit": batch, "now": now}
    return {
        "insert_tasks": {"rows": Json([created])},
        "append_leased_receipt": {"rows": Json([receipt]), "now": now},
        "settle_under_lease": {"rows": Json([receipt]), "now": now},
        "claim_at_once": {"rows": Json([slot]), **claim},
        "claim_candidates": claim,
        "grant_leases": {"rows": Json([grant]), "tenant": tenant},
        "lock_receipt_tasks": {"tenant": tenant, "task_ids": [task], "ids": [obligation]},
        "apply_receipt_effects": {"rows": Json([effect]), "tenant": tenant},
        "insert_receipt": {
            "rows": Json(
                [
                    {
                        **receipt,
                        "to_principal": "p",
                        "created_at": now,
                        "stripped_parent_receipt_ids": None,
                    }
                ]
            )
        },  # fmt: skip
        "get_task": {"tenant": tenant, "task_id": task},
        "obligations_closed_by": {"tenant": tenant, "ids": [obligation], "closed_by": new_id()},
        "obligation_cursor": {"tenant": tenant, "id": obligation},
    }
