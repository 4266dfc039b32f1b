"""The embedded SQLite dialect: AsyncGate's default storage, no server needed.

One write connection serialises writers (SQLite has one writer at a time anyway);
reads use a second connection, which WAL mode lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from asyncgate import PROJECT_ROOT, hookimpl
from asyncgate.settings import Settings
from asyncgate.storage import (
    ID_LIST_COLUMNS,
    JSON_COLUMNS,
    TIME_COLUMNS,
    Row,
    StorageUnavailable,
    TaskSignal,
    UniqueViolation,
    load_queries,
    migration_files,
)

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
# A query run by ``many`` may hold several statements, each run over every row in turn (the
# PostgreSQL dialect does the same work in one statement).
STATEMENTS = {name: [part.strip() for part in sql.split(";\n")] for name, sql in QUERIES.items()}
MIGRATIONS = PROJECT_ROOT / "migrations" / "sqlite"
log = logging.getLogger("asyncgate")
SCHEMES = ("sqlite",)
_SIGNALS: dict[str, TaskSignal] = {}


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_db(params: Mapping[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            converted[name] = None
        elif name in JSON_COLUMNS or name in ID_LIST_COLUMNS:
            converted[name] = orjson.dumps(value).decode()
        elif isinstance(value, datetime):
            converted[name] = format_time(value)
        elif isinstance(value, bool):
            converted[name] = int(value)
        else:
            converted[name] = value
    return converted


def from_db(row: sqlite3.Row) -> Row:
    result: Row = {}
    for name in row.keys():  # noqa: SIM118 (iterating a sqlite3.Row yields values)
        value = row[name]
        if value is not None:
            if name in JSON_COLUMNS or name in ID_LIST_COLUMNS:
                value = orjson.loads(value)
            elif name in TIME_COLUMNS:
                value = datetime.fromisoformat(value)
        result[name] = value
    return result


class SQLiteTx:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def one(self, query: str, **params: Any) -> Row | None:
        async with _mapped_errors(), self.conn.execute(QUERIES[query], to_db(params)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else from_db(row)

    async def all(self, query: str, **params: Any) -> list[Row]:
        async with _mapped_errors(), self.conn.execute(QUERIES[query], to_db(params)) as cursor:
            rows = await cursor.fetchall()
        return [from_db(row) for row in rows]

    async def run(self, query: str, **params: Any) -> None:
        async with _mapped_errors():
            await self.conn.execute(QUERIES[query], to_db(params))

    async def many(self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any) -> None:
        if rows:
            each = [to_db({**row, **params}) for row in rows]
            async with _mapped_errors():
                for statement in STATEMENTS[query]:
                    await self.conn.executemany(statement, each)

    async def many_returning(
        self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any
    ) -> list[Row]:
        # Statement by statement, in the caller's transaction: in process they cost no round trip.
        returned = []
        for row in rows:
            returned.extend(await self.all(query, **row, **params))
        return returned


@asynccontextmanager
async def _mapped_errors() -> AsyncIterator[None]:
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
            raise UniqueViolation(str(exc)) from exc
        raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc) or "unable to open" in str(exc):
            raise StorageUnavailable(str(exc)) from exc
        raise


class SQLiteDialect:
    name = "sqlite"
    # Statements cost no round trip in process: the general paths are as quick.
    fast_paths: frozenset[str] = frozenset()

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        # Shared by every dialect on this file in this process (other processes are polled).
        self._signal = _SIGNALS.setdefault(str(Path(path).resolve()), TaskSignal())

    async def _connect(self) -> aiosqlite.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"cannot open {self.path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        async with self._open_lock:
            if self._writer is None:
                self._writer = await self._connect()
                self._reader = await self._connect()

    async def close(self) -> None:
        for conn in (self._writer, self._reader):
            if conn is not None:
                await conn.close()
        self._writer = self._reader = None

    async def ping(self) -> bool:
        try:
            async with self.snapshot() as tx:
                return await tx.one("count_tasks") is not None
        except (StorageUnavailable, sqlite3.Error):
            return False

    async def migrate(self) -> list[str]:
        await self.open()
        assert self._writer is not None
        conn = self._writer
        applied: list[str] = []
        async with self._write_lock:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            for version, name, sql in migration_files(MIGRATIONS):
                async with conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                ) as cursor:
                    if await cursor.fetchone():
                        continue
                # The version row goes first: a concurrent migrator that lost the race fails
                # on its primary key before touching the schema, and its transaction rolls back.
                now = format_time(datetime.now(UTC))
                script = (
                    "BEGIN IMMEDIATE;\n"
                    f"INSERT INTO schema_migrations VALUES ({version}, '{name}', '{now}');\n"
                    f"{sql}\nCOMMIT;"
                )
                log.info("applying migration %s", name, extra={"migration": name})
                started = time.monotonic()
                try:
                    await conn.executescript(script)
                except sqlite3.IntegrityError:
                    await conn.execute("ROLLBACK")
                    continue
                except sqlite3.Error:
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                    raise
                applied.append(name)
                log.info(
                    "applied migration %s", name,
                    extra={"migration": name, "seconds": round(time.monotonic() - started, 3)},
                )  # fmt: skip
        return applied

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteTx]:
        await self.open()
        assert self._writer is not None
        async with self._write_lock:
            conn = self._writer
            async with _mapped_errors():
                await conn.execute("BEGIN IMMEDIATE")
            try:
                yield SQLiteTx(conn)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            async with _mapped_errors():
                await conn.execute("COMMIT")

    def autocommit(self) -> AbstractAsyncContextManager[SQLiteTx]:
        # SQLite's transactions cost no round trip: one statement gets the same write lock.
        return self.transaction()

    def checked_write(self) -> AbstractAsyncContextManager[SQLiteTx]:
        return self.transaction()

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[SQLiteTx]:
        await self.open()
        assert self._reader is not None
        async with self._read_lock:
            conn = self._reader
            await conn.execute("BEGIN")
            try:
                yield SQLiteTx(conn)
            finally:
                await conn.execute("ROLLBACK")

    async def stream(self, query: str, **params: Any) -> AsyncIterator[Row]:
        # A connection of its own, so a long dump never blocks other readers or writers.
        conn = await self._connect()
        try:
            async with conn.execute(QUERIES[query], to_db(params)) as cursor:
                while rows := await cursor.fetchmany(500):
                    for row in rows:
                        yield from_db(row)
        finally:
            await conn.close()

    async def wait_for_tasks(self, tenant: str, timeout: float) -> None:
        await self._signal.wait(tenant, timeout)

    def tasks_created(self, tenant: str) -> None:
        self._signal.notify(tenant)


def path_from_url(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``."""
    rest = url.split(":", 1)[1]
    if not rest.startswith("///"):
        raise ValueError("a SQLite URL is sqlite:///path (three slashes, then the file path)")
    path = rest[3:]
    if not path:
        raise ValueError("a SQLite URL needs a file path after sqlite:///")
    return path


@hookimpl
def asyncgate_dialect_names() -> list[str]:
    return list(SCHEMES)


@hookimpl
def asyncgate_dialect(scheme: str, url: str, settings: Settings) -> SQLiteDialect | None:
    if scheme not in SCHEMES:
        return None
    return SQLiteDialect(path_from_url(url))
