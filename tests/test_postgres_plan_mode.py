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
import uuid
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

from asyncgate import plugins
from asyncgate.settings import Settings

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


def test_pages_are_planned_for_their_values_on_every_call(database: str) -> None:
    """Pages are never prepared (PLANNED_PER_CALL): a generic plan cannot turn their optional
    filters and keyset cursor into index bounds, and would read a deep page from the tenant's
    first row. Key lookups, by contrast, are prepared on their fifth use."""
    fill(database, "t", THRESHOLD, analyze=True)
    no_filters = dict.fromkeys(("task_id", "type", "type_prefix", "since", "until"))
    no_cursor = {"after_created_at": None, "after_id": None}

    async def scenario() -> tuple[str, set[str]]:
        dialect = PostgresDialect(conninfo_from_url(database), 1, 1)
        try:
            async with dialect.autocommit() as tx:
                for _ in range(8):
                    await tx.all("list_receipts", tenant="t", limit=5, **no_filters, **no_cursor)
                    await tx.all("list_tasks", tenant="t", limit=5, type=None, state=None,
                                 now=datetime.now(UTC), **no_cursor)  # fmt: skip
                    await tx.all("open_obligations", tenant="t", limit=5, **no_cursor)
                    await tx.one("get_task", tenant="t", task_id=str(uuid.uuid4()))
                mode = await (await tx.conn.execute("SHOW plan_cache_mode")).fetchone()
                prepared = await (
                    await tx.conn.execute("SELECT statement FROM pg_prepared_statements")
                ).fetchall()
            return mode["plan_cache_mode"], {row["statement"] for row in prepared}
        finally:
            await dialect.close()

    mode, prepared = asyncio.run(scenario())
    assert mode == "auto"

    def was_prepared(query: str) -> bool:
        # Up to the first parameter: the server holds it as $1, not %(name)s.
        head = QUERIES[query].split("%(", 1)[0]
        return any(statement.startswith(head) for statement in prepared)

    assert was_prepared("get_task")
    assert [q for q in ("list_receipts", "list_tasks", "open_obligations") if was_prepared(q)] == []


def test_operators_can_keep_every_call_planned(database: str) -> None:
    fill(database, "t", THRESHOLD, analyze=True)
    settings = Settings.from_env(
        {"ASYNCGATE_DATABASE_URL": database, "ASYNCGATE_DB_GENERIC_PLANS": "false"},
        require_keys=False,
    )

    async def mode() -> str:
        dialect = plugins.dialect_for(settings)
        try:
            dialect.plan_mode.recheck()
            async with dialect._connection() as conn:
                row = await (await conn.execute("SHOW plan_cache_mode")).fetchone()
                return row["plan_cache_mode"]
        finally:
            await dialect.close()

    assert asyncio.run(mode()) == "force_custom_plan"


def test_joined_writes_prepared_on_small_tables_go_generic_after_the_switch(database: str) -> None:
    """Under `auto` the server keeps a generic plan only if it costs no more than the average
    plan made for actual values so far. A receipt settle prepared while the tables were empty
    kept that average so low that every call after the switch was planned anew, until the
    connection closed; the switch now prepares the joined writes again."""
    settle = hot_statement_params("t", datetime.now(UTC))["settle_under_lease"]
    rows, now = settle["rows"].obj, settle["now"]

    async def settles(dialect: PostgresDialect, calls: int) -> None:
        for _ in range(calls):
            async with dialect.autocommit() as tx:
                assert await tx.many_returning("settle_under_lease", rows, now=now) == []

    async def scenario() -> tuple[str, int, int]:
        dialect = PostgresDialect(conninfo_from_url(database), 1, 1)  # one connection
        try:
            await settles(dialect, 10)  # prepared and planned per call on empty tables
            fill(database, "t", THRESHOLD, analyze=True)
            dialect.plan_mode.recheck()
            await settles(dialect, 10)
            async with dialect._connection() as conn:
                mode = await (await conn.execute("SHOW plan_cache_mode")).fetchone()
                head = QUERIES["settle_under_lease"].split("%(", 1)[0]
                plans = await (
                    await conn.execute(
                        "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                        " WHERE starts_with(statement, %s)",
                        [head],
                    )
                ).fetchone()
            return mode["plan_cache_mode"], plans["generic_plans"], plans["custom_plans"]
        finally:
            await dialect.close()

    # Five calls planned for their values, as the server plans any new prepared statement,
    # then the generic plan for the other five.
    assert asyncio.run(scenario()) == ("auto", 5, 5)
