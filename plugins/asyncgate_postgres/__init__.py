"""The PostgreSQL dialect: psycopg 3 with a connection pool, for several instances on one database.

Concurrency is the database's job here: claims lock rows with ``FOR UPDATE SKIP LOCKED``,
receipts lock their task row, and transactions run at READ COMMITTED.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb, set_json_dumps, set_json_loads
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from asyncgate import PROJECT_ROOT, hookimpl
from asyncgate.settings import Settings
from asyncgate.storage import (
    JSON_COLUMNS,
    Row,
    StorageUnavailable,
    TaskSignal,
    TransientConflict,
    UniqueViolation,
    load_queries,
    migration_files,
)
from asyncgate_postgres.direct import DirectStatements
from asyncgate_postgres.listener import Listener

QUERIES = load_queries(Path(__file__).with_name("queries.sql"))
DIRECT = DirectStatements(QUERIES)
MIGRATIONS = PROJECT_ROOT / "migrations" / "postgres"
SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg")
# Every `asyncgate migrate` (and every instance migrating at startup) queues on this lock.
MIGRATION_LOCK = 0x41_5947_4154  # "ASYGAT"
# How long a request waits for a pooled connection before answering 503.
POOL_TIMEOUT = 10.0
PING_TIMEOUT = 3.0
# While the server is known to be down, requests fail at once; a new probe at most this often.
PROBE_INTERVAL = 1.0
DEFAULT_CONNINFO = {"application_name": "asyncgate", "connect_timeout": "5"}
SESSION_SETUP = (
    # Timestamps come back as UTC datetimes.
    "SET TIME ZONE 'UTC'",
    # Until the ledger is known to be large enough (see PlanMode), every call is planned.
    "SET plan_cache_mode = force_custom_plan",
)
# Planned for their actual values on every call (sent unprepared): their optional filters and
# keyset cursors (`%(x)s IS NULL OR ...`) fold away, or become index bounds, only when the
# planner sees the values. A generic plan would read a deep page from the tenant's first row.
PLANNED_PER_CALL = frozenset({"list_tasks", "list_receipts", "open_obligations"})
# SQLSTATE classes meaning the server or the connection went away: 08 connection exception,
# 57P admin/crash shutdown or "cannot connect now" (starting up, recovering).
_DOWN_STATES = ("08", "57P")
_IDLE = psycopg.pq.TransactionStatus.IDLE
_OPEN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)

log = logging.getLogger("asyncgate")


def conninfo_from_url(url: str) -> str:
    """A libpq conninfo from any accepted URL form; the ``+driver`` suffix is only a label."""
    scheme, rest = url.split(":", 1)
    if scheme.lower() not in SCHEMES:
        raise ValueError(f"not a PostgreSQL URL scheme: {scheme}")
    if not rest.startswith("//"):
        raise ValueError("a PostgreSQL URL is postgresql://user@host:port/database")
    conninfo = "postgresql:" + rest
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"cannot parse the PostgreSQL URL: {exc}") from None
    defaults = {name: value for name, value in DEFAULT_CONNINFO.items() if name not in given}
    return make_conninfo(conninfo, **defaults)


def to_db(params: Mapping[str, Any]) -> dict[str, Any]:
    """JSON columns travel as jsonb; ids, id lists and times need no conversion (cast in SQL)."""
    return {
        name: Jsonb(value) if name in JSON_COLUMNS and value is not None else value
        for name, value in params.items()
    }


def _is_down(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout | PoolClosed | psycopg.InterfaceError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(_DOWN_STATES)


# When each pooled connection last went back to the pool.
_returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
    weakref.WeakKeyDictionary()
)
IDLE_CHECK_AFTER = 1.0


def _note_return(conn: psycopg.AsyncConnection[Any]) -> None:
    # Called by the borrower, not as the pool's reset callback: a reset callback makes the
    # pool hand every return to its worker task, a task switch per request.
    _returned_at[conn] = time.monotonic()


async def _check_if_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """Check with a round trip only a connection that may be dead.

    An idle connection has nothing to read unless the server closed it (a restart sends a
    FATAL notice, then EOF), which select() sees at no cost; one idle for a while may have
    died silently, so it gets the real check.
    """
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable or time.monotonic() - _returned_at.get(conn, 0.0) > IDLE_CHECK_AFTER:
        await AsyncConnectionPool.check_connection(conn)


class PlanMode:
    """Whether prepared statements may keep one generic plan, on every pooled connection.

    psycopg prepares a statement on its fifth use. Under plan_cache_mode `auto` the server
    then keeps one generic plan for it when that plan is estimated no worse than the plans made
    for actual values; planning each write anew was about 40 % of PostgreSQL's CPU per life
    cycle. But a generic plan is kept until the tables are analyzed again, and one made on
    near-empty tables is a guess: there every index costs the same, and a key lookup was
    planned through an index on the tenant alone, a scan of the tenant once the tables fill
    (tests/test_postgres_plan_mode.py). So plans are made per call until the statistics say that
    tasks, receipts and leases each hold GENERIC_PLANS_MIN_ROWS rows (autovacuum's ANALYZE
    updates them), and each connection is switched as it leaves the pool. The statistics are
    read on a pooled connection every few seconds until then, and every minute after.
    ASYNCGATE_DB_GENERIC_PLANS=false (``allowed=False``) keeps every call planned.
    """

    GENERIC_PLANS_MIN_ROWS = 1000
    CHECK_INTERVAL = 60.0
    CHECK_INTERVAL_UNTIL_LARGE = 5.0
    # -1 until all three tables exist (before the first migration) and have been analyzed.
    ROWS_KNOWN = (
        "SELECT CASE WHEN count(*) = 3 THEN min(reltuples) ELSE -1 END AS rows FROM pg_class"
        " WHERE oid IN (to_regclass('tasks'), to_regclass('receipts'), to_regclass('leases'))"
    )

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        self.wanted = "force_custom_plan"
        self._checked_at = -self.CHECK_INTERVAL
        # Every connection starts in force_custom_plan (SESSION_SETUP).
        self._set: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], str] = (
            weakref.WeakKeyDictionary()
        )

    def recheck(self) -> None:
        """Look at the statistics again on the next checkout, whatever the interval."""
        self._checked_at = -self.CHECK_INTERVAL

    async def apply(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self.allowed:
            return
        interval = self.CHECK_INTERVAL if self.wanted == "auto" else self.CHECK_INTERVAL_UNTIL_LARGE
        if time.monotonic() - self._checked_at >= interval:
            self._checked_at = time.monotonic()
            row = await (await conn.execute(self.ROWS_KNOWN)).fetchone()
            rows = row["rows"]  # type: ignore[index]  # pooled connections return dict rows
            wanted = "auto" if rows >= self.GENERIC_PLANS_MIN_ROWS else "force_custom_plan"
            if wanted != self.wanted:
                log.info(
                    "plan_cache_mode is now %s", wanted,
                    extra={"plan_cache_mode": wanted, "fewest_rows": rows},
                )  # fmt: skip
            self.wanted = wanted
        if self._set.get(conn, "force_custom_plan") != self.wanted:
            await conn.execute(f"SET plan_cache_mode = {self.wanted}")
            self._set[conn] = self.wanted
            # Under `auto` the server keeps a generic plan only if it costs no more than the
            # average of the plans made for actual values so far, and plans made while the
            # tables were small kept that average low: a statement prepared then went on being
            # planned per call long after (receipt settles, in 110 calls of 110 in one test).
            # Prepared anew, the joined writes start from the statistics as they are now.
            await DIRECT.forget(conn)


SNAPSHOT_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"


@asynccontextmanager
async def _pipelined(conn: psycopg.AsyncConnection[Any], begin: str) -> AsyncIterator[None]:
    """A transaction in pipeline mode: BEGIN travels with the first read, and every write
    after the last read travels with COMMIT, so it costs (reads + 1) round trips.

    BEGIN and COMMIT are plain statements rather than psycopg's ``transaction()``, which in
    pipeline mode adds a sync of its own and measured about 180 us more CPU per transaction.
    A failure anywhere (a statement's error, the caller's exception, a failed COMMIT) ends in
    ROLLBACK, so nothing is half-written.
    """
    try:
        async with conn.pipeline():
            await conn.execute(begin)
            yield
            await conn.execute("COMMIT")
    except BaseException:
        if conn.info.transaction_status in _OPEN_TRANSACTION:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
        raise


class PostgresTx:
    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self.conn = conn

    async def _read(self, query: str, params: dict[str, Any]) -> psycopg.AsyncCursor[Row]:
        prepare = False if query in PLANNED_PER_CALL else None  # None: psycopg's own choice
        return await self.conn.execute(QUERIES[query], to_db(params), prepare=prepare)

    async def one(self, query: str, **params: Any) -> Row | None:
        return await (await self._read(query, params)).fetchone()

    async def all(self, query: str, **params: Any) -> list[Row]:
        return await (await self._read(query, params)).fetchall()

    async def run(self, query: str, **params: Any) -> None:
        # Not waited for: in pipeline mode it is confirmed with the next read or the commit.
        await self.conn.execute(QUERIES[query], to_db(params))

    async def many(self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any) -> None:
        # Every row in one statement: the rows travel as one JSON parameter, which the query
        # unpacks with json_to_recordset. Encoding one list in orjson costs far less than
        # adapting each row's parameters, and the server runs one statement, not one per row.
        if rows:
            await self.conn.execute(QUERIES[query], {"rows": Json(rows), **to_db(params)})

    async def many_returning(
        self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any
    ) -> list[Row]:
        # As ``many``: one statement, whatever the number of rows.
        cursor = await self.conn.execute(QUERIES[query], {"rows": Json(rows), **to_db(params)})
        return await cursor.fetchall()


class DirectTx(PostgresTx):
    """The rows-at-once writes (every joined write among them) go past psycopg's cursor (see
    direct.py); the rest through psycopg."""

    async def many(self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any) -> None:
        if rows:
            await self.many_returning(query, rows, **params)

    async def many_returning(
        self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any
    ) -> list[Row]:
        return await DIRECT.execute(self.conn, query, {"rows": Json(rows), **to_db(params)})


class _Borrowed:
    """``async with dialect._connection() as conn``: a pooled connection, given back on exit,
    with psycopg and pool errors raised as the storage errors they stand for.

    A class rather than @asynccontextmanager generators: each async generator costs a
    registration with the event loop and a round of calls, and this runs for every request.
    getconn/putconn rather than pool.connection(), whose nested context managers cost more
    than the checkout itself; what its ``async with conn`` did on exit is done here.
    """

    __slots__ = ("_dialect", "_timeout", "_pool", "_conn")

    def __init__(self, dialect: PostgresDialect, timeout: float) -> None:
        self._dialect = dialect
        self._timeout = timeout

    async def __aenter__(self) -> psycopg.AsyncConnection[Row]:
        dialect = self._dialect
        if dialect._pool is None:
            await dialect.open()
        pool = dialect._pool
        assert pool is not None
        try:
            if dialect._down and (
                time.monotonic() - dialect._probed_at < PROBE_INTERVAL or not await dialect._probe()
            ):
                raise StorageUnavailable("PostgreSQL is unreachable")
            self._conn = await dialect._checkout(pool, self._timeout)
        except Exception as exc:
            if (mapped := dialect._mapped(exc)) is None:
                raise
            raise mapped from exc
        self._pool = pool
        try:
            await dialect.plan_mode.apply(self._conn)
        except BaseException as exc:
            # __aexit__ will not run: the connection goes back here (the pool discards it
            # if it broke).
            await pool.putconn(self._conn)
            if isinstance(exc, Exception) and (mapped := dialect._mapped(exc)) is not None:
                raise mapped from exc
            raise
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        conn = self._conn
        try:
            try:
                if conn.pgconn.transaction_status != _IDLE and not conn.closed:
                    if exc is None:
                        await conn.commit()
                    else:
                        with contextlib.suppress(Exception):
                            await conn.rollback()
            finally:
                _note_return(conn)
                await self._pool.putconn(conn)
        except Exception as error:  # it replaces the body's exception, if any
            if (mapped := self._dialect._mapped(error)) is None:
                raise
            raise mapped from error
        if exc is not None and (mapped := self._dialect._mapped(exc)) is not None:
            raise mapped from exc


class _Autocommit(_Borrowed):
    """``async with dialect.autocommit() as tx``: every joined write enters one, so it is a
    class, as ``_Borrowed`` is, not an @asynccontextmanager generator."""

    __slots__ = ()

    async def __aenter__(self) -> DirectTx:
        return DirectTx(await super().__aenter__())


class PostgresDialect:
    name = "postgres"
    # Each saves a transaction's worth of round trips and statements on a hot path.
    fast_paths = frozenset({"claim_at_once", "settle_under_lease"})

    def __init__(
        self, conninfo: str, min_size: int, max_size: int, generic_plans: bool = True
    ) -> None:
        self.conninfo = conninfo
        self.min_size = min_size
        self.max_size = max_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._signal = TaskSignal()
        self._listener = Listener(conninfo, self._signal)
        self.plan_mode = PlanMode(allowed=generic_plans)
        # Set when the server is seen down; cleared by the first probe that connects.
        self._down = False
        self._probed_at = 0.0

    # Connections ---------------------------------------------------------------------

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        set_json_dumps(orjson.dumps, conn)
        set_json_loads(orjson.loads, conn)
        # uuid and uuid[] columns load straight into canonical str, the ledger's id shape.
        conn.adapters.register_loader("uuid", TextLoader)
        for statement in SESSION_SETUP:
            await conn.execute(statement)

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = AsyncConnectionPool(
            self.conninfo,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=self._configure,
            # A connection idle for a while is checked as it leaves the pool: after a server
            # restart the dead ones are discarded and replaced instead of failing one request
            # each. A busy pool's connections skip the check, which costs a round trip.
            check=_check_if_idle,
            timeout=POOL_TIMEOUT,
            name="asyncgate",
            open=False,
        )
        # Not waiting: a database that is down at startup makes requests answer 503, and the
        # pool keeps reconnecting in the background.
        await self._pool.open(wait=False)
        if not await self._probe():
            log.warning("PostgreSQL is unreachable; answering 503 until it is back")

    async def close(self) -> None:
        await self._listener.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _probe(self) -> bool:
        """Connect once outside the pool, to tell "down" from "busy" without waiting."""
        self._probed_at = time.monotonic()
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, connect_timeout=2)
        except psycopg.Error:
            self._down = True
            return False
        await conn.close()
        self._down = False
        return True

    def _connection(self, timeout: float = POOL_TIMEOUT) -> _Borrowed:
        return _Borrowed(self, timeout)

    async def _checkout(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]], timeout: float
    ) -> psycopg.AsyncConnection[Row]:
        """A pooled connection, waited for in slices with a probe between them.

        When the server goes away, the pool's dead connections fail their check and the
        pool waits on reconnects that cannot succeed: without a probe, a request would be
        held for the whole timeout instead of answering 503 at once.
        """
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.01, min(PROBE_INTERVAL, deadline - time.monotonic()))
            try:
                return await pool.getconn(timeout=wait)
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise
            # One probe a second at most, shared by every waiting request.
            if time.monotonic() - self._probed_at >= PROBE_INTERVAL:
                await self._probe()
            if self._down:
                raise StorageUnavailable("PostgreSQL is unreachable")

    def _mapped(self, exc: BaseException) -> Exception | None:
        """The storage error that stands for a psycopg or pool error, None for any other."""
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return UniqueViolation(str(exc))
        if isinstance(
            exc,
            psycopg.errors.SerializationFailure
            | psycopg.errors.DeadlockDetected
            # A prepared statement that psycopg deallocated inside a transaction (direct.py).
            | psycopg.errors.InvalidSqlStatementName,
        ):
            return TransientConflict(str(exc))
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | PoolClosed):
            # PoolTimeout is an OperationalError: the pool had no connection to give in time.
            if _is_down(exc):
                self._down = True
            return StorageUnavailable(str(exc) or type(exc).__name__)
        return None

    # The Dialect protocol --------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            async with self._connection(PING_TIMEOUT) as conn:
                await conn.execute(QUERIES["count_tasks"])
            return True
        except (StorageUnavailable, psycopg.Error):
            return False

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        for version, name, sql in migration_files(MIGRATIONS):
            # One transaction per migration, under an advisory lock held until it commits:
            # a concurrent migrator waits, then sees the version row and skips.
            async with self._connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
                    " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cursor = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", [version]
                )
                if await cursor.fetchone() is not None:
                    continue
                # Some migrations rebuild indexes, for minutes on a large ledger: say so.
                log.info("applying migration %s", name, extra={"migration": name})
                started = time.monotonic()
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    [version, name],
                )
                applied.append(name)
            # Outside the block: said once the migration has committed.
            log.info(
                "applied migration %s", name,
                extra={"migration": name, "seconds": round(time.monotonic() - started, 3)},
            )  # fmt: skip
        return applied

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        async with self._connection() as conn, _pipelined(conn, "BEGIN"):
            yield PostgresTx(conn)

    def autocommit(self) -> _Autocommit:
        # Pooled connections are in autocommit mode: each statement is its own transaction.
        return _Autocommit(self, POOL_TIMEOUT)

    @asynccontextmanager
    async def checked_write(self) -> AsyncIterator[PostgresTx]:
        # BEGIN, the statement and COMMIT go through direct.py: three short round trips for
        # less Python than psycopg's pipelined transaction.
        async with self._connection() as conn:
            await DIRECT.command(conn, b"BEGIN")
            try:
                yield DirectTx(conn)
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        await DIRECT.command(conn, b"ROLLBACK")
                raise
            await DIRECT.command(conn, b"COMMIT")

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PostgresTx]:
        # One consistent snapshot for the cursor lookup and the page it anchors.
        async with self._connection() as conn, _pipelined(conn, SNAPSHOT_BEGIN):
            yield PostgresTx(conn)

    async def stream(self, query: str, **params: Any) -> AsyncIterator[Row]:
        # A pooled connection of its own and a server-side cursor: rows arrive in batches,
        # so the dump's memory stays flat however many obligations are open.
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            async with conn.cursor(name="asyncgate_stream") as cursor:
                cursor.itersize = 500
                await cursor.execute(QUERIES[query], to_db(params))
                async for row in cursor:
                    yield row

    async def wait_for_tasks(self, tenant: str, timeout: float) -> None:
        # Other instances announce new tasks by NOTIFY (see queries.sql, notify_tasks).
        self._listener.start()
        await self._signal.wait(tenant, timeout)

    def tasks_created(self, tenant: str) -> None:
        self._signal.notify(tenant)


@hookimpl
def asyncgate_dialect_names() -> list[str]:
    return list(SCHEMES)


@hookimpl
def asyncgate_dialect(scheme: str, url: str, settings: Settings) -> PostgresDialect | None:
    if scheme not in SCHEMES:
        return None
    return PostgresDialect(
        conninfo_from_url(url),
        settings.db_pool_min_size,
        settings.db_pool_max_size,
        generic_plans=settings.db_generic_plans,
    )
