"""PostgreSQL query plans: what the open-obligation dump and the termination evidence cost.

Proved with EXPLAIN ANALYZE row counts on a ledger of thousands of closed tasks, never with
timings. The bulk rows are written in SQL (as the ledger would write them) to make the ledger
large quickly; the obligations under test are written through the HTTP API.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from asyncgate_postgres import QUERIES
from conftest import Tenants, create_migrated_pg_database, drop_pg_database
from plans import PLAN_KINDS, plan_nodes
from test_postgres import auth, instances

CLOSED = 6000
OPEN = 40
TERMINATING = ("task.success", "task.failure", "task.cancelled")

# `count` tasks of one tenant, each with its obligation, a started and a progress receipt,
# and (unless open) a locatable success naming the obligation.
BULK = """
WITH t AS (
  INSERT INTO tasks (tenant, task_id, type, payload, principal, created_by, priority,
                     request_hash, state, obligation_receipt_id, obligation_open,
                     created_at, updated_at)
  SELECT %(tenant)s, gen_random_uuid(), 'bulk', '{}', 'service:a', 'service:a', 0, 'bulk',
         CASE WHEN %(open)s THEN 'PENDING' ELSE 'COMPLETED' END, gen_random_uuid(), %(open)s,
         now() - interval '1 day' + i * interval '1 ms', now()
  FROM generate_series(1, %(count)s) AS i
  RETURNING tenant, task_id, obligation_receipt_id, created_at
), obligations AS (
  INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                        parent_receipt_ids, body, artifacts, content_hash, created_at)
  SELECT tenant, obligation_receipt_id, 'task.assigned', task_id, 'service:a', 'service:a',
         '{}', '{}', '[]', 'bulk', created_at FROM t
)
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                      parent_receipt_ids, body, artifacts, content_hash, created_at)
SELECT tenant, gen_random_uuid(), r.type, task_id, 'service:a', 'service:a',
       ARRAY[obligation_receipt_id], '{}', '[{"uri": "s3://bulk"}]', 'bulk',
       created_at + interval '1 ms'
FROM t, (VALUES ('task.started'), ('task.progress'), ('task.success')) AS r(type)
WHERE NOT %(open)s OR r.type <> 'task.success'
"""

# The termination evidence for one obligation, as the spec defines it: the receipts that name
# it, found through the parents index, then kept if they terminate. Written as a materialized
# step because tenant statistics are off (migration 0003): a tenant holding most of the ledger
# is estimated at 0.5 % of it, and the planner may then also read all of its terminating
# receipts through receipts_by_type to intersect with the few rows the parents index finds.
NAMED_BY_TERMINATING = """
WITH naming AS MATERIALIZED (
    -- The second condition is the index's own (migration 0005): it holds no empty lists.
    SELECT tenant, type FROM receipts
    WHERE parent_receipt_ids @> ARRAY[%(obligation)s::uuid] AND parent_receipt_ids <> '{}'
)
SELECT NOT EXISTS (
    SELECT 1 FROM naming
    WHERE tenant = %(tenant)s AND type IN ('task.success', 'task.failure', 'task.cancelled')
) AS expected_open
"""


@pytest.fixture(scope="module")
def ledger_tenants(tmp_path_factory: pytest.TempPathFactory) -> Tenants:
    return Tenants(tmp_path_factory.mktemp("plans"))


@pytest.fixture(scope="module")
def ledger_url(ledger_tenants: Tenants) -> Iterator[str]:
    """A database of its own: CLOSED closed and OPEN open tasks for tenant a, noise for c."""
    name, url = create_migrated_pg_database("asyncgate_plans")
    add_bulk(url, ledger_tenants.tenant["a"], CLOSED, False)
    add_bulk(url, ledger_tenants.tenant["a"], OPEN, True)
    add_bulk(url, ledger_tenants.tenant["c"], 2000, True)
    yield url
    drop_pg_database(name)


def add_bulk(url: str, tenant: str, count: int, open_: bool) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BULK, {"tenant": tenant, "count": count, "open": open_})
        conn.execute("VACUUM ANALYZE")


def dump_plan(url: str, tenant: str, kind: str) -> list[dict]:
    params = {"tenant": tenant, "limit": None, "after_created_at": None, "after_id": None}
    with psycopg.connect(url) as conn:
        return plan_nodes(conn, QUERIES["open_obligations"], params, kind)


def rows_read_from(nodes: list[dict], relation: str) -> tuple[set[str], int]:
    """Which indexes a relation was read through, and how many rows came out of them."""
    scans = [node for node in nodes if node.get("Relation Name") == relation]
    rows = sum(node["Actual Rows"] * node["Actual Loops"] for node in scans)
    indexes = {index for node in nodes if (index := node.get("Index Name"))}
    return indexes, rows


def test_open_obligation_dump_reads_only_open_rows_however_large_the_ledger(
    ledger_url: str, ledger_tenants: Tenants
) -> None:
    tenant = ledger_tenants.tenant["a"]
    with psycopg.connect(ledger_url) as conn:
        (ledger_rows,) = conn.execute(
            "SELECT count(*) FROM receipts WHERE tenant = %s", [tenant]
        ).fetchone()
    assert ledger_rows == CLOSED * 4 + OPEN * 3

    for ledger_grows_by in (0, CLOSED):
        add_bulk(ledger_url, tenant, ledger_grows_by, False)
        # Always planned for its values (PLANNED_PER_CALL), as the streamed dump is too.
        nodes = dump_plan(ledger_url, tenant, "custom")
        assert not [node for node in nodes if node["Node Type"] == "Seq Scan"]
        indexes, task_rows = rows_read_from(nodes, "tasks")
        assert "tasks_open_obligations" in indexes
        assert task_rows == OPEN, "the dump visited closed tasks"
        # The obligation receipts follow from the open task rows: the ledger is never read.
        assert not [node for node in nodes if node.get("Relation Name") == "receipts"]
        assert nodes[0]["Actual Rows"] == OPEN


@pytest.mark.parametrize("kind", PLAN_KINDS)
def test_a_claim_reads_only_claimable_rows_however_many_tasks_are_done(
    ledger_url: str, ledger_tenants: Tenants, kind: str
) -> None:
    params = {"tenant": ledger_tenants.tenant["a"], "types": ["bulk"], "limit": 5}
    with psycopg.connect(ledger_url) as conn:
        params["now"] = conn.execute("SELECT now()").fetchone()[0]
        nodes = plan_nodes(conn, QUERIES["claim_candidates"], params, kind)
        conn.rollback()
    assert nodes[0]["Actual Rows"] == 5
    assert "LockRows" in {node["Node Type"] for node in nodes}
    # Partial indexes hold no COMPLETED task: a claim reads a few rows, not the 12000 done.
    _, task_rows = rows_read_from(nodes, "tasks")
    assert task_rows <= 3 * 5
    assert not [node for node in nodes if node["Node Type"] == "Seq Scan"]


@pytest.mark.anyio
async def test_the_dump_through_the_api_is_every_open_obligation_of_the_tenant(
    ledger_url: str, ledger_tenants: Tenants
) -> None:
    async with instances(1, ledger_url, ledger_tenants) as (app,):
        dump = await app.simulate_get("/v1/obligations/open", headers=auth(ledger_tenants))
        page = await app.simulate_get(
            "/v1/obligations/open", headers=auth(ledger_tenants), params={"limit": "15"}
        )
    assert dump.status_code == 200
    assert len(dump.json) == OPEN and {r["type"] for r in dump.json} == {"task.assigned"}
    created = [receipt["created_at"] for receipt in dump.json]
    assert created == sorted(created)
    assert page.json == dump.json[:15] and 'rel="next"' in page.headers["link"]


async def write_outcomes(app: Any, headers: dict[str, str]) -> dict[str, bool]:
    """One task per way an obligation can end (or not); returns task_id -> should be open."""

    async def post(path: str, body: dict[str, Any], status: int = 201) -> Any:
        result = await app.simulate_post(path, headers=headers, json=body)
        assert result.status_code == status, result.text
        return result.json

    expected: dict[str, bool] = {}
    artifacts = [{"uri": "s3://out/1"}]
    outcomes: list[tuple[bool, list[dict[str, Any]]]] = [
        (True, []),
        (False, [{"type": "task.success", "artifacts": artifacts}]),
        (True, [{"type": "task.success"}]),  # stripped: no evidence
        (True, [{"type": "task.success", "artifacts": [], "delivery_proof": {}}]),
        (False, [{"type": "task.success", "delivery_proof": {"signed_by": "x"}}]),
        (False, [{"type": "task.failure"}]),
        (False, [{"type": "task.cancelled"}]),
        (False, [{"type": "task.success"}, {"type": "task.failure"}]),
        (True, [{"type": "task.failure", "parent_receipt_ids": []}]),
        (
            False,
            [
                {"type": "task.failure", "parent_receipt_ids": []},
                {"type": "task.success", "artifacts": artifacts},
            ],
        ),
    ]
    for should_be_open, receipts in outcomes:
        task = await post("/v1/tasks", {"type": "outcome"})
        obligation = [task["obligation_receipt_id"]]
        for receipt in receipts:
            await post(
                "/v1/receipts",
                {"task_id": task["task_id"], "parent_receipt_ids": obligation, **receipt},
            )
        expected[task["task_id"]] = should_be_open
    # A leased task with only progress: still open, and its receipts name the obligation.
    task = await post("/v1/tasks", {"type": "leased"})
    grant = await post_claim(app, headers)
    for kind in ("task.started", "task.progress"):
        await post(
            "/v1/receipts",
            {
                "type": kind,
                "task_id": task["task_id"],
                "lease_id": grant["lease_id"],
                "parent_receipt_ids": [task["obligation_receipt_id"]],
            },
        )
    expected[task["task_id"]] = True
    return expected


async def post_claim(app: Any, headers: dict[str, str]) -> dict[str, Any]:
    result = await app.simulate_post(
        "/v1/leases", headers=headers, json={"worker": "worker:w", "types": ["leased"]}
    )
    assert result.status_code == 200 and len(result.json) == 1, result.text
    return result.json[0]


@pytest.mark.anyio
async def test_obligation_open_equals_no_terminating_receipt_naming_it_via_the_gin_index(
    ledger_url: str, ledger_tenants: Tenants
) -> None:
    # The API's outcomes go to tenant b, so the dump tests' counts for tenant a hold in any order.
    tenants = [ledger_tenants.tenant["a"], ledger_tenants.tenant["b"]]
    async with instances(1, ledger_url, ledger_tenants) as (app,):
        expected = await write_outcomes(app, auth(ledger_tenants, "b"))

    async with await psycopg.AsyncConnection.connect(ledger_url) as conn:
        # Each lookup is planned for its obligation id, so it is estimated from the index.
        await conn.execute("SET plan_cache_mode = force_custom_plan")
        cursor = await conn.execute(
            "SELECT tenant, task_id::text, obligation_receipt_id::text, obligation_open"
            " FROM tasks WHERE tenant = ANY(%s) ORDER BY created_at",
            [tenants],
        )
        tasks = await cursor.fetchall()
        async with conn.cursor() as check:
            await check.executemany(
                NAMED_BY_TERMINATING,
                [
                    {"tenant": tenant, "obligation": obligation}
                    for tenant, _, obligation, _ in tasks
                ],
                returning=True,
            )
            evidence = []
            while True:
                evidence.append((await check.fetchone())[0])
                if not check.nextset():
                    break
    flags = {task_id: is_open for _, task_id, _, is_open in tasks}
    assert len(evidence) == len(tasks) > CLOSED
    mismatched = [task for task, open_ in zip(tasks, evidence, strict=True) if task[3] != open_]
    assert mismatched == []
    assert {task_id: flags[task_id] for task_id in expected} == expected

    # In a tenant holding most of a large ledger.
    samples = [
        next(task for task in tasks if task[0] == tenants[0] and task[3] is is_open)
        for is_open in (False, True)
    ]
    with psycopg.connect(ledger_url) as sync_conn:
        for tenant, _, obligation, _ in samples:
            nodes = plan_nodes(
                sync_conn,
                NAMED_BY_TERMINATING,
                {"tenant": tenant, "obligation": obligation},
                "custom",  # planned for its obligation id, as the lookups above were
            )
            indexes, receipt_rows = rows_read_from(nodes, "receipts")
            assert indexes == {"receipts_parents"}
            # Only the receipts naming the obligation: started, progress and perhaps success.
            assert receipt_rows <= 3
            assert not [node for node in nodes if node["Node Type"] == "Seq Scan"]
