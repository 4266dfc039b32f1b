"""PostgreSQL plans for a tenant that appeared since the tables were last analyzed.

Autovacuum analyzes a table only after a tenth of it has changed, so on a large ledger a new
tenant can go long unseen by the planner's statistics. Each hot statement must still read a
few rows of the tenant by key, not scan all of its tasks (as claims and lookups once did: see
migrations/postgres/0003_tenant_statistics.sql). Proved with actual row counts, in the session
settings the app uses, for the plan made for the values and for the generic plan that a
prepared statement may keep (tests/plans.py), never with timings.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
from asyncgate_postgres import QUERIES, SESSION_SETUP
from conftest import create_migrated_pg_database, drop_pg_database
from plans import PLAN_KINDS, plan_nodes
from psycopg.types.json import Json, set_json_dumps
from test_postgres_plans import BULK

DONE, OPEN, LEASED = 3000, 200, 40
# Rows a statement may visit in tasks for a batch of BATCH: its own, and a little slack.
BATCH = 10
BOUND = 4 * BATCH


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name, url = create_migrated_pg_database("asyncgate_new_tenant")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BULK, {"tenant": "known", "count": 500, "open": True})
        conn.execute("ANALYZE")
        # After the last ANALYZE: a tenant the statistics have never seen.
        conn.execute(BULK, {"tenant": "new", "count": DONE, "open": False})
        conn.execute(BULK, {"tenant": "new", "count": OPEN, "open": True})
    yield url
    drop_pg_database(name)


@pytest.fixture
def conn(database: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database) as conn:
        set_json_dumps(orjson.dumps, conn)
        for statement in SESSION_SETUP:
            conn.execute(statement)
        yield conn
        conn.rollback()


def leased(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    """(task_id, lease_id, obligation_receipt_id) of LEASED of the new tenant's open tasks."""
    return conn.execute(
        "UPDATE tasks SET state = 'ACTIVE', lease_id = gen_random_uuid(), lease_worker = 'w',"
        " lease_expires_at = now() + interval '1 hour', lease_generation = 1"
        " WHERE task_id IN (SELECT task_id FROM tasks WHERE tenant = 'new'"
        "                   AND state = 'PENDING' LIMIT %s)"
        " RETURNING task_id::text, lease_id::text, obligation_receipt_id::text",
        [LEASED],
    ).fetchall()


@pytest.fixture(params=PLAN_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def tasks_rows_visited(
    conn: psycopg.Connection[Any],
    kind: str,
    query: str,
    params: dict[str, Any],
    relation: str = "tasks",
) -> int:
    """Rows of ``relation`` the statement's plan read, kept or filtered out, over all loops."""
    return sum(
        (
            node["Actual Rows"]
            + node.get("Rows Removed by Filter", 0)
            + node.get("Rows Removed by Index Recheck", 0)
        )
        * node["Actual Loops"]
        for node in plan_nodes(conn, QUERIES[query], params, kind)
        if node.get("Relation Name") == relation
    )


def rows_compared_in_joins(
    conn: psycopg.Connection[Any], kind: str, query: str, params: dict[str, Any]
) -> int:
    """Rows a plan's joins compared and rejected, over all loops."""
    return sum(
        node.get("Rows Removed by Join Filter", 0) * node["Actual Loops"]
        for node in plan_nodes(conn, QUERIES[query], params, kind)
    )


def receipt_rows(grants: list[tuple[str, str, str]], settle: bool) -> list[dict[str, Any]]:
    return [
        {
            "tenant": "new",
            "receipt_id": str(uuid.uuid4()),
            "type": "task.success" if settle else "task.progress",
            "task_id": task_id,
            "from_principal": "service:new",
            "lease_id": lease_id,
            "parent_receipt_ids": [obligation] if settle else [],
            "body": {},
            "artifacts": [{"uri": "s3://bucket/out"}] if settle else [],
            "delivery_proof": None,
            "content_hash": "h",
            "state": "COMPLETED",
            "closes": settle,
        }
        for task_id, lease_id, obligation in grants
    ]


def test_one_statement_receipts_read_only_their_tasks(
    conn: psycopg.Connection[Any], kind: str
) -> None:
    grants = leased(conn)
    now = datetime.now(UTC)
    for query, batch, settle in (
        ("append_leased_receipt", grants[:BATCH], False),
        ("settle_under_lease", grants[BATCH : 2 * BATCH], True),
    ):
        params = {"rows": Json(receipt_rows(batch, settle)), "now": now}
        assert tasks_rows_visited(conn, kind, query, params) <= BOUND, query


def test_claims_read_only_the_tasks_they_take(conn: psycopg.Connection[Any], kind: str) -> None:
    now = datetime.now(UTC)
    slots = [
        {"slot": n + 1, "lease_id": str(uuid.uuid4()), "worker": "w", "expires_at": now}
        for n in range(BATCH)
    ]
    shared = {"tenant": "new", "types": None, "limit": BATCH, "now": now}
    assert tasks_rows_visited(conn, kind, "claim_at_once", {"rows": Json(slots), **shared}) <= BOUND
    # A hundred joined claims: their slots meet the candidates by hash, not pair by pair.
    many = [{**slots[0], "slot": n + 1, "lease_id": str(uuid.uuid4())} for n in range(100)]
    params = {"rows": Json(many), **shared, "limit": len(many)}
    assert rows_compared_in_joins(conn, kind, "claim_at_once", params) <= len(many)
    assert tasks_rows_visited(conn, kind, "claim_candidates", shared) <= BOUND


def test_lookups_by_key_read_only_their_rows(conn: psycopg.Connection[Any], kind: str) -> None:
    grants = leased(conn)
    some = grants[:BATCH]
    locked = {
        "tenant": "new",
        "task_ids": [task_id for task_id, _, _ in some],
        "ids": [obligation for _, _, obligation in grants[BATCH : 2 * BATCH]],
    }
    assert tasks_rows_visited(conn, kind, "lock_receipt_tasks", locked) <= BOUND
    assert tasks_rows_visited(conn, kind, "lock_receipt_tasks", locked, "receipts") <= BOUND
    # A task's obligation is found through its receipt (migration 0004), by primary key.
    closed = {"tenant": "new", "ids": locked["ids"], "closed_by": str(uuid.uuid4())}
    assert tasks_rows_visited(conn, kind, "obligations_closed_by", closed) <= BOUND
    assert tasks_rows_visited(conn, kind, "obligations_closed_by", closed, "receipts") <= BOUND
    cursor = {"tenant": "new", "id": locked["ids"][0]}
    assert tasks_rows_visited(conn, kind, "obligation_cursor", cursor) <= 2
    assert tasks_rows_visited(conn, kind, "obligation_cursor", cursor, "receipts") <= 2
    one = {"tenant": "new", "task_id": some[0][0]}
    assert tasks_rows_visited(conn, kind, "get_task", one) <= 2


def test_receipt_effects_touch_only_their_tasks_and_leases(
    conn: psycopg.Connection[Any], kind: str
) -> None:
    grants = leased(conn)[:BATCH]
    # The new tenant's lease records, all written since the last ANALYZE: these and thousands
    # more, released and not.
    conn.execute(
        "INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at,"
        " expires_at, released_at)"
        " SELECT 'new', gen_random_uuid(), gen_random_uuid(), 1, 'w', now(), now(),"
        "        CASE WHEN i %% 2 = 0 THEN now() END"
        " FROM generate_series(1, %s) AS i",
        [DONE],
    )
    conn.execute(
        "INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at,"
        " expires_at) SELECT 'new', lease_id::uuid, task_id::uuid, 1, 'w', now(), now()"
        " FROM unnest(%s::text[], %s::text[]) AS g(task_id, lease_id)",
        [[task_id for task_id, _, _ in grants], [lease_id for _, lease_id, _ in grants]],
    )
    now = datetime.now(UTC)
    rows = [
        {"tenant": "new", "task_id": task_id, "state": "COMPLETED", "end_lease_id": lease_id,
         "closed_by": None, "now": now}
        for task_id, lease_id, _ in grants
    ]  # fmt: skip
    params = {"rows": Json(rows), "tenant": "new"}
    assert tasks_rows_visited(conn, kind, "apply_receipt_effects", params) <= BOUND
    assert tasks_rows_visited(conn, kind, "apply_receipt_effects", params, "leases") <= BOUND


def test_one_statement_receipts_do_no_work_per_pair_of_rows(
    conn: psycopg.Connection[Any], kind: str
) -> None:
    # A join between two CTEs is planned from their estimates (one row each) as a nested loop:
    # it compared every pair of the statement's rows (1,600 here; 16,256 for 128 rows).
    grants = leased(conn)
    half = len(grants) // 2
    now = datetime.now(UTC)
    for query, batch, settle in (
        ("append_leased_receipt", grants[:half], False),
        ("settle_under_lease", grants[half:], True),
    ):
        params = {"rows": Json(receipt_rows(batch, settle)), "now": now}
        assert rows_compared_in_joins(conn, kind, query, params) <= len(batch), query


def test_granting_leases_reads_only_the_tasks_granted(
    conn: psycopg.Connection[Any], kind: str
) -> None:
    now = datetime.now(UTC)
    pending = conn.execute(
        "SELECT task_id::text FROM tasks WHERE tenant = 'new' AND state = 'PENDING' LIMIT %s",
        [BATCH],
    ).fetchall()

    def grants() -> dict[str, Any]:
        # Fresh lease ids each time: EXPLAIN ANALYZE writes them.
        rows = [
            {"tenant": "new", "task_id": task_id, "lease_id": str(uuid.uuid4()), "worker": "w",
             "expires_at": now, "generation": 1, "now": now}
            for (task_id,) in pending
        ]  # fmt: skip
        return {"rows": Json(rows), "tenant": "new"}

    assert tasks_rows_visited(conn, kind, "grant_leases", grants()) <= BOUND
    assert rows_compared_in_joins(conn, kind, "grant_leases", grants()) <= BATCH
