"""Claims cost what is claimable, not what is in progress (actual row counts, not timings), with
the plan made for the values and with a generic plan (tests/plans.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from asyncgate_postgres import QUERIES
from conftest import create_migrated_pg_database, drop_pg_database
from plans import PLAN_KINDS, plan_nodes

LEASED = 5000
PENDING = 100
EXPIRED = 20

# LEASED tasks under live leases, EXPIRED whose lease ran out, PENDING waiting: all one tenant.
SEED = """
INSERT INTO tasks (tenant, task_id, type, payload, principal, created_by, priority,
                   request_hash, state, lease_id, lease_expires_at, lease_generation,
                   obligation_receipt_id, created_at, updated_at)
SELECT 't', gen_random_uuid(), CASE WHEN i %% 2 = 0 THEN 'even' ELSE 'odd' END, '{}',
       'service:a', 'service:a', 0, 'seed',
       CASE WHEN i <= %(active)s THEN 'ACTIVE' ELSE 'PENDING' END,
       CASE WHEN i <= %(active)s THEN gen_random_uuid() END,
       CASE WHEN i <= %(expired)s THEN now() - interval '1 minute'
            WHEN i <= %(active)s THEN now() + interval '1 hour' END,
       CASE WHEN i <= %(active)s THEN 1 ELSE 0 END,
       gen_random_uuid(), now() - interval '1 day' + i * interval '1 ms', now()
FROM generate_series(1, %(total)s) AS i
"""


@pytest.fixture(scope="module")
def claim_url() -> Iterator[str]:
    name, url = create_migrated_pg_database("asyncgate_claims")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            SEED,
            {"expired": EXPIRED, "active": EXPIRED + LEASED, "total": EXPIRED + LEASED + PENDING},
        )
        conn.execute("VACUUM ANALYZE tasks")
    yield url
    drop_pg_database(name)


def plan(
    url: str, types: list[str] | None, limit: int, kind: str = "custom"
) -> tuple[list[dict], list[dict]]:
    params = {"tenant": "t", "now": datetime.now(UTC), "types": types, "limit": limit}
    # Not committed: the rows stay claimable for the next test.
    with psycopg.connect(url) as conn:
        nodes = plan_nodes(conn, QUERIES["claim_candidates"], params, kind)
        conn.rollback()
        rows = conn.execute(QUERIES["claim_candidates"], params).fetchall()
        conn.rollback()
    return nodes, rows


@pytest.mark.parametrize("kind", PLAN_KINDS)
@pytest.mark.parametrize("types", [None, ["even"]])
def test_a_claim_never_steps_over_live_leases(claim_url: str, types, kind: str):
    nodes, rows = plan(claim_url, types, 10, kind)
    assert len(rows) == 10
    stepped_over = sum(n.get("Rows Removed by Filter", 0) * n["Actual Loops"] for n in nodes)
    scanned = sum(
        n["Actual Rows"] * n["Actual Loops"] for n in nodes if n.get("Relation Name") == "tasks"
    )
    assert stepped_over < LEASED / 10, f"the claim filtered out {stepped_over} rows"
    assert scanned < LEASED / 10, f"the claim read {scanned} task rows"
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]


def test_expired_leases_come_first_in_priority_then_age_order(claim_url: str):
    _, rows = plan(claim_url, None, EXPIRED + 5)
    with psycopg.connect(claim_url) as conn:
        ids = [row[1] for row in rows]  # (tenant, task_id, ...) in table order
        found = conn.execute(
            "SELECT task_id, state, created_at FROM tasks WHERE task_id = ANY(%s)", [ids]
        ).fetchall()
    by_id = {task_id: (state, created_at) for task_id, state, created_at in found}
    ordered = [by_id[task_id] for task_id in ids]
    # Same priority everywhere, so age decides: the expired (oldest) ones, then pending.
    assert [created for _, created in ordered] == sorted(created for _, created in ordered)
    assert [state for state, _ in ordered] == ["ACTIVE"] * EXPIRED + ["PENDING"] * 5
