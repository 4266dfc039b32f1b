"""The joined writes' own path to libpq (asyncgate_postgres/direct.py): the same rows as
psycopg's cursor, prepared statements that survive psycopg's DEALLOCATE ALL, errors raised as
psycopg raises them, and a connection closed when a statement is interrupted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors
import pytest
from asyncgate_postgres import PostgresDialect, conninfo_from_url
from asyncgate_postgres.direct import DirectStatements, Statement
from psycopg.types.json import Json
from test_fast_paths import leased_task, success

from asyncgate.ledger import Ledger
from asyncgate.metrics import Metrics
from asyncgate.settings import Identity, Settings

QUERIES = {
    "echo": (
        "SELECT %(id)s::uuid AS id, %(at)s::timestamptz AS at, %(n)s::int AS n,"
        " %(n)s::int + 1 AS next, r.label, r.doc"
        " FROM json_to_recordset(%(rows)s::json) AS r(label text, doc jsonb) ORDER BY r.label"
    ),
    "insert": "INSERT INTO direct_probe (key) SELECT key FROM unnest(%(keys)s::text[]) AS key",
    "sleep": "SELECT pg_sleep(%(seconds)s::float8) AS slept",
}


@pytest.fixture
async def conn(pg_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    # A pooled connection, configured as the service configures its own.
    dialect = PostgresDialect(conninfo_from_url(pg_database), 1, 2)
    await dialect.open()
    try:
        async with dialect._connection() as connection:
            yield connection
    finally:
        await dialect.close()


def params() -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "at": datetime(2026, 11, 30, 12, 0, 1, 250000, tzinfo=UTC),
        "n": 41,
        "rows": Json([{"label": "b", "doc": {"k": [1, 2]}}, {"label": "a", "doc": None}]),
    }


def test_placeholders_are_numbered_once_each() -> None:
    statement = Statement("SELECT %(a)s, %(b)s, %(a)s")
    assert statement.sql == b"SELECT $1, $2, $1"
    assert statement.names == ("a", "b")


@pytest.mark.anyio
async def test_rows_come_back_as_psycopgs_cursor_returns_them(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    direct = DirectStatements(QUERIES)
    given = params()
    through_cursor = await (await conn.execute(QUERIES["echo"], given)).fetchall()
    assert await direct.execute(conn, "echo", given) == through_cursor
    assert through_cursor[0] == {
        "id": given["id"],  # uuid loads as str on the service's connections
        "at": given["at"],
        "n": 41,
        "next": 42,
        "label": "a",
        "doc": None,
    }
    assert through_cursor[1]["doc"] == {"k": [1, 2]}


async def prepared_count(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many prepared statements the connection's session holds."""
    row = await (await conn.execute("SELECT count(*) AS n FROM pg_prepared_statements")).fetchone()
    assert row is not None
    return row["n"]


@pytest.mark.anyio
async def test_a_statement_is_prepared_once_and_again_after_deallocate_all(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    direct = DirectStatements(QUERIES)
    for _ in range(3):
        await direct.execute(conn, "echo", params())
    assert await prepared_count(conn) == 1
    # What psycopg sends after a rollback on a connection where it prepared statements.
    await conn.execute("DEALLOCATE ALL")
    assert (await direct.execute(conn, "echo", params()))[0]["n"] == 41


@pytest.mark.anyio
async def test_forget_deallocates_what_was_prepared_even_after_deallocate_all(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    direct = DirectStatements({name: f"SELECT '{name}' AS v" for name in "ab"})
    await direct.execute(conn, "a", {})
    await conn.execute("DEALLOCATE ALL")  # a is gone behind the session's back
    await direct.execute(conn, "b", {})
    assert await prepared_count(conn) == 1
    await direct.forget(conn)
    assert await prepared_count(conn) == 0
    # Each is prepared again on its next call.
    assert await direct.execute(conn, "a", {}) == [{"v": "a"}]
    assert await prepared_count(conn) == 1


@pytest.mark.anyio
async def test_a_name_is_never_given_twice_on_one_connection(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    direct = DirectStatements({name: f"SELECT '{name}' AS v" for name in "abcd"})
    await direct.execute(conn, "a", {})
    await direct.execute(conn, "b", {})
    await conn.execute("DEALLOCATE ALL")
    # Prepared after the deallocation, before any statement found its own gone: it lives on
    # while a and b are prepared again, and d must not take its name.
    await direct.execute(conn, "c", {})
    for name in "abdc":
        assert await direct.execute(conn, name, {}) == [{"v": name}]


@pytest.mark.anyio
async def test_an_error_is_psycopgs_and_leaves_the_connection_usable(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    await conn.execute("CREATE TEMPORARY TABLE direct_probe (key text PRIMARY KEY)")
    direct = DirectStatements(QUERIES)
    assert await direct.execute(conn, "insert", {"keys": ["x"]}) == []
    with pytest.raises(psycopg.errors.UniqueViolation):
        await direct.execute(conn, "insert", {"keys": ["y", "x"]})
    assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    await direct.execute(conn, "insert", {"keys": ["y"]})
    keys = await (await conn.execute("SELECT key FROM direct_probe ORDER BY key")).fetchall()
    assert [row["key"] for row in keys] == ["x", "y"]


@pytest.mark.anyio
async def test_an_interrupted_statement_closes_its_connection(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    direct = DirectStatements(QUERIES)
    sleeping = asyncio.ensure_future(direct.execute(conn, "sleep", {"seconds": 5}))
    await asyncio.sleep(0.2)
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    # Its state is unknown, so the pool must discard it rather than lend it again.
    assert conn.closed
    with pytest.raises(psycopg.OperationalError):
        await direct.execute(conn, "echo", params())


@pytest.mark.anyio
async def test_checked_write_commits_on_exit_and_rolls_back_on_raise(pg_database: str) -> None:
    dialect = PostgresDialect(conninfo_from_url(pg_database), 1, 2)
    await dialect.open()
    table = f"checked_{uuid.uuid4().hex[:8]}"
    try:
        async with dialect.autocommit() as tx:
            await tx.conn.execute(f"CREATE TABLE {table} (key text)")
        with pytest.raises(LookupError):
            async with dialect.checked_write() as tx:
                await tx.conn.execute(f"INSERT INTO {table} VALUES ('refused')")
                raise LookupError("the caller refuses what it wrote")
        async with dialect.checked_write() as tx:
            await tx.conn.execute(f"INSERT INTO {table} VALUES ('kept')")
        async with dialect.autocommit() as tx:
            rows = await (await tx.conn.execute(f"SELECT key FROM {table}")).fetchall()
            assert [row["key"] for row in rows] == ["kept"]
            assert tx.conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        async with dialect.autocommit() as tx:
            await tx.conn.execute(f"DROP TABLE IF EXISTS {table}")
        await dialect.close()


@pytest.mark.anyio
async def test_a_statement_deallocated_inside_a_transaction_fails_it_and_is_prepared_again(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    direct = DirectStatements(QUERIES)
    await direct.execute(conn, "echo", params())
    await conn.execute("DEALLOCATE ALL")
    await direct.command(conn, b"BEGIN")
    # The error aborted the transaction: running the statement again inside it cannot work.
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        await direct.execute(conn, "echo", params())
    await direct.command(conn, b"ROLLBACK")
    assert (await direct.execute(conn, "echo", params()))[0]["n"] == 41


@pytest.mark.anyio
async def test_a_batch_settle_whose_statement_was_deallocated_falls_back(
    pg_database: str,
) -> None:
    # One connection, so the statement deallocated is the one the batch will use.
    dialect = PostgresDialect(conninfo_from_url(pg_database), 1, 1)
    await dialect.open()
    await dialect.migrate()

    async def emit(anomalies: list[dict[str, Any]], tenant: str) -> None:
        return None

    ledger = Ledger(dialect, Settings(), Metrics(), emit)
    identity = Identity(f"direct-{uuid.uuid4().hex[:10]}", "service:direct")
    try:
        first = await settle_rows(ledger, identity)
        assert await ledger._settle_all_or_none(first) is not None  # prepares the statement
        second = await settle_rows(ledger, identity)
        async with dialect.autocommit() as tx:
            await tx.conn.execute("DEALLOCATE ALL")
        # TransientConflict inside checked_write: nothing written, the general path answers.
        assert await ledger._settle_all_or_none(second) is None
        for row in second:
            task = await ledger.get_task(identity, row["task_id"])
            assert task["state"] == "ACTIVE"
        assert await ledger._settle_all_or_none(second) is not None
    finally:
        await dialect.close()


async def settle_rows(ledger: Ledger, identity: Identity) -> list[dict[str, Any]]:
    """Two leased tasks' successes as rows of the batch settle statement."""
    batch = [success(await leased_task(ledger, identity)) for _ in range(2)]
    rows = ledger._settle_rows(identity, batch)
    assert rows is not None and len(rows) == 2
    return rows
