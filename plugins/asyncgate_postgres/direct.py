"""Joined writes sent through libpq directly, past psycopg's cursor.

A joined write (see ``asyncgate/coalesce.py``) is one prepared statement in autocommit, run
hundreds of times a second, and each life-cycle request carries a sixth of one. psycopg's
cursor spends much of a request's Python time per statement: creating the cursor, converting
the query, its prepared-statement bookkeeping, its wait loop. Here each (query, parameter
types) is prepared once per connection under a name of its own, its parameters are dumped and
its rows loaded by psycopg's own C Transformer with the connection's adapters (so rows come
back exactly as the cursor returns them), and each wait is one future on the socket.

psycopg runs ``DEALLOCATE ALL`` after a rollback on a connection where it prepared statements,
which drops these too: a call that finds its statement gone prepares it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import weakref
from collections.abc import Mapping
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_FATAL = pq.ExecStatus.FATAL_ERROR
_OK = pq.ConnStatus.OK
_IDLE = pq.TransactionStatus.IDLE


class Statement:
    """A named query with psycopg's ``%(name)s`` placeholders turned into ``$n``."""

    __slots__ = ("sql", "names", "formats", "columns")

    def __init__(self, query: str) -> None:
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            if (name := match.group(1)) not in order:
                order.append(name)
            return f"${order.index(name) + 1}"

        self.sql = _PLACEHOLDER.sub(number, query).encode()
        self.names = tuple(order)
        self.formats = [PyFormat.AUTO] * len(order)
        # The result's column names, read from the first result.
        self.columns: tuple[str, ...] | None = None


class _Session:
    """What one connection holds: the statements prepared on it, and its transformer."""

    __slots__ = ("transformer", "prepared", "names_given")

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.transformer = Transformer(conn)
        self.prepared: dict[tuple[str, tuple[int, ...]], bytes] = {}
        # Names are never reused on a connection: after a DEALLOCATE ALL, a statement prepared
        # before any call found its own gone still holds its name.
        self.names_given = 0


class DirectStatements:
    def __init__(self, queries: Mapping[str, str]) -> None:
        self._statements = {name: Statement(sql) for name, sql in queries.items()}
        self._sessions: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Session] = (
            weakref.WeakKeyDictionary()
        )

    async def execute(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Run ``query`` on ``conn`` (idle in autocommit, or in a transaction begun with
        ``command``); its rows as dicts, [] if none."""
        statement = self._statements[query]
        session = self._sessions.get(conn)
        if session is None:
            session = self._sessions[conn] = _Session(conn)
        transformer = session.transformer
        values = transformer.dump_sequence(
            [params[name] for name in statement.names], statement.formats
        )
        key = (query, tuple(transformer.types))
        pgconn = _open(conn)
        for attempt in (1, 2):
            name = session.prepared.get(key)
            if name is None:
                name = f"asyncgate_{session.names_given}".encode()
                session.names_given += 1
                pgconn.send_prepare(name, statement.sql, param_types=transformer.types)
                self._raise_for(conn, await _results(conn))
                session.prepared[key] = name
            pgconn.send_query_prepared(name, values, param_formats=transformer.formats)
            result = (await _results(conn))[-1]
            if result.status == _FATAL:
                error = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
                if isinstance(error, psycopg.errors.InvalidSqlStatementName):
                    session.prepared.clear()  # psycopg deallocated everything
                    # In autocommit nothing was lost: prepare and run it again. In a
                    # transaction the error aborted it, so the caller runs it again (the
                    # dialect maps this error to TransientConflict).
                    if attempt == 1 and pgconn.transaction_status == _IDLE:
                        continue
                raise error
            break
        if not result.ntuples:
            return []
        if statement.columns is None:
            statement.columns = tuple(
                (result.fname(index) or b"").decode() for index in range(result.nfields)
            )
        columns = statement.columns
        transformer.set_pgresult(result)
        return transformer.load_rows(
            0, result.ntuples, lambda row: dict(zip(columns, row, strict=True))
        )

    async def forget(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Deallocate the statements prepared on ``conn`` (idle): each is prepared again on its
        next call, with no history of the plans made for it so far."""
        session = self._sessions.get(conn)
        if session is None:
            return
        names = list(session.prepared.values())
        session.prepared.clear()
        for name in names:
            # One at a time: psycopg may have deallocated them all already (see above).
            with contextlib.suppress(psycopg.errors.InvalidSqlStatementName):
                await self.command(conn, b"DEALLOCATE " + name)

    async def command(self, conn: psycopg.AsyncConnection[Any], sql: bytes) -> None:
        """Run a statement with no parameters and no rows (BEGIN, COMMIT, ROLLBACK, DEALLOCATE)."""
        _open(conn).send_query(sql)
        self._raise_for(conn, await _results(conn))

    @staticmethod
    def _raise_for(conn: psycopg.AsyncConnection[Any], results: list[pq.abc.PGresult]) -> None:
        for result in results:
            if result.status == _FATAL:
                raise psycopg.errors.error_from_result(result, encoding=conn.info.encoding)


def _open(conn: psycopg.AsyncConnection[Any]) -> pq.abc.PGconn:
    """The connection's libpq handle, if it is still open."""
    if conn.pgconn.status != _OK:
        raise psycopg.OperationalError("the connection is lost")
    return conn.pgconn


async def _results(conn: psycopg.AsyncConnection[Any]) -> list[pq.abc.PGresult]:
    """Send what libpq holds, then read every result of the command sent.

    Any interruption (a cancelled request, a lost server) leaves the command's state unknown,
    so the connection is closed, and the pool discards it when it comes back.
    """
    pgconn = conn.pgconn
    loop = asyncio.get_running_loop()
    fileno = pgconn.socket
    results: list[pq.abc.PGresult] = []
    try:
        while pgconn.flush():  # 1 while part of the command is still unsent
            await _ready(loop, fileno, writer=True)
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    return results
                results.append(result)
            await _ready(loop, fileno, writer=False)
    except BaseException:
        pgconn.finish()
        raise


async def _ready(loop: asyncio.AbstractEventLoop, fileno: int, writer: bool) -> None:
    future = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    if writer:
        loop.add_writer(fileno, wake)
    else:
        loop.add_reader(fileno, wake)
    try:
        await future
    finally:
        if writer:
            loop.remove_writer(fileno)
        else:
            loop.remove_reader(fileno)
