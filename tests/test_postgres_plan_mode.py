"""When prepared statements may keep a generic plan (asyncgate_postgres.PlanMode).

A generic plan is kept until its tables are analyzed again. Made on near-empty tables it is a
guess (every index costs the same there), and kept while they fill it can read a whole tenant
per row. So the app plans every call until the statistics count GENERIC_PLANS_MIN_ROWS rows in
tasks, receipts and leases; these tests prove the switch, and that plans made at that size
stay cheap on tables ten times larger, before any new ANALYZE. Row counts, never timings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
from asyncgate_postgres import (
    QUERIES,
    SESSION_SETUP,
    PlanMode,
    PostgresDialect,
    conninfo_from_url,
)
from conftest import create_migrated_pg_database, drop_pg_database
from plans import hot_statement_params, plan_nodes
from psycopg.types.json import set_json_dumps
from test_postgres_plans import BULK

THRESHOLD = PlanMode.GENERIC_PLANS_MIN_ROWS
LEASES = """
INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at, expires_at,
                    released_at)
SELECT %(tenant)s, gen_random_uuid(), gen_random_uuid(), 1, 'w', now(), now(), now()
FROM generate_series(1, %(count)s)
"""


def fill(url: str, tenant: str, tasks: int, analyze: bool) -> None:
    """``tasks`` closed tasks (four receipts each) and as many released leases."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BULK, {"tenant": tenant, "count": tasks, "open": False})
        conn.execute(BULK, {"tenant": tenant, "count": 50, "open": True})
        conn.execute(LEASES, {"tenant": tenant, "count": tasks})
        if analyze:
            conn.execute("ANALYZE tasks, receipts, leases")


@pytest.fixture
def database() -> Iterator[str]:
    name, url = create_migrated_pg_database("asyncgate_plan_mode")
    with psycopg.connect(url, autocommit=True) as conn:
        # Nothing may re-plan behind the test's back: a cached plan lives until an ANALYZE.
        for table in ("tasks", "receipts", "leases"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    yield url
    drop_pg_database(name)


def test_every_call_is_planned_until_the_tables_are_large_enough(
    database: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def mode(dialect: PostgresDialect) -> str:
        dialect.plan_mode.recheck()
        async with dialect._connection() as conn:
            row = await (await conn.execute("SHOW plan_cache_mode")).fetchone()
            return row["plan_cache_mode"]

    async def scenario() -> list[str]:
        dialect = PostgresDialect(conninfo_from_url(database), 1, 2)
        try:
            seen = [await mode(dialect)]  # a new, empty database
            fill(database, "t", THRESHOLD // 2, analyze=True)
            seen.append(await mode(dialect))  # analyzed, but small
            fill(database, "t", THRESHOLD, analyze=False)
            seen.append(await mode(dialect))  # large, but the statistics do not know yet
            with psycopg.connect(database, autocommit=True) as conn:
                conn.execute("ANALYZE tasks, receipts, leases")
            seen.append(await mode(dialect))
            return seen
        finally:
            await dialect.close()

    with caplog.at_level(logging.INFO, logger="asyncgate"):
        assert asyncio.run(scenario()) == ["force_custom_plan"] * 3 + ["auto"]
    # Operators see the switch once, in the structured log.
    switches = [r for r in caplog.records if r.getMessage().startswith("plan_cache_mode is now")]
    assert [(r.getMessage(), r.fewest_rows >= THRESHOLD) for r in switches] == [
        ("plan_cache_mode is now auto", True)
    ]


def rows_visited(nodes: list[dict]) -> dict[str, int]:
    """Rows of each ledger table a plan read, kept or filtered out, over all loops."""
    visited = dict.fromkeys(("tasks", "receipts", "leases"), 0)
    for node in nodes:
        if (relation := node.get("Relation Name")) in visited and "Scan" in node["Node Type"]:
            visited[relation] += (
                node["Actual Rows"]
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
            ) * node["Actual Loops"]
    return visited


def test_generic_plans_made_at_the_threshold_stay_cheap_as_the_tables_grow(database: str) -> None:
    fill(database, "t", THRESHOLD, analyze=True)
    now = datetime.now(UTC)
    with psycopg.connect(database) as conn:
        set_json_dumps(orjson.dumps, conn)
        for statement in SESSION_SETUP:
            conn.execute(statement)

        def run_all() -> dict[str, dict[str, int]]:
            visited: dict[str, dict[str, Any]] = {}
            for query, params in hot_statement_params("t", now).items():
                visited[query] = rows_visited(plan_nodes(conn, QUERIES[query], params, "generic"))
                conn.rollback()
            return visited

        at_threshold = run_all()  # each statement prepared, its generic plan made and kept
        fill(database, "t", 10 * THRESHOLD, analyze=False)
        grown = run_all()  # the same plans, now over ten times the rows
    # A claim takes at most its limit of the pending tasks (10); every other statement looks
    # up new ids by key and finds nothing. A scan of the tenant would read thousands.
    too_many = {
        query: visited
        for query, visited in grown.items()
        if any(rows > 3 * 10 for rows in visited.values())
    }
    assert too_many == {}, (too_many, at_threshold)
