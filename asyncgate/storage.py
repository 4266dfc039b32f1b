"""The storage interface that dialect plugins implement.

The ledger holds the logic once; a dialect supplies connections, transactions and
its SQL. Queries are data: each dialect ships a ``queries.sql`` of named queries
(``-- name --`` headers, as in procrastinate), and the ledger runs them by name.

Values cross this boundary in one shape for every dialect:
- ids are ``str`` (UUIDs in canonical form), timestamps are aware UTC ``datetime``;
- JSON columns (``JSON_COLUMNS``) are Python objects, and so are id lists
  (``ID_LIST_COLUMNS``), whatever the dialect stores underneath.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from pathlib import Path
from typing import Any, Protocol

JSON_COLUMNS = frozenset({"payload", "body", "artifacts", "delivery_proof"})
ID_LIST_COLUMNS = frozenset(
    {
        "parent_receipt_ids",
        "stripped_parent_receipt_ids",
        "found_parent_ids",
        "ids",
        "task_ids",
        "types",
        "keys",
    }
)
TIME_COLUMNS = frozenset(
    {
        "created_at",
        "updated_at",
        "lease_expires_at",
        "expires_at",
        "granted_at",
        "now",
        "cutoff",
        "since",
        "until",
        "after_created_at",
        "released_at",
    }
)

Row = dict[str, Any]


class StorageUnavailable(Exception):
    """The database cannot be reached now; the request may be retried (HTTP 503)."""


class UniqueViolation(Exception):
    """A unique constraint refused a write (mapped to HTTP 409 by the ledger)."""


class TransientConflict(Exception):
    """A serialization failure or deadlock: the whole transaction may simply be run again."""


class Tx(Protocol):
    """One open transaction. Every method runs a named query of the dialect's queries.sql."""

    async def one(self, query: str, **params: Any) -> Row | None: ...

    async def all(self, query: str, **params: Any) -> list[Row]: ...

    async def run(self, query: str, **params: Any) -> None:
        """A write whose result is not needed; it may be confirmed only at commit."""
        ...

    async def many(self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any) -> None:
        """Run a write for every row, with ``params`` shared by every row. A dialect may send
        all rows as one statement (PostgreSQL does, as a JSON recordset), so the rows of one
        call must not depend on each other."""
        ...

    async def many_returning(
        self, query: str, rows: Sequence[Mapping[str, Any]], **params: Any
    ) -> list[Row]:
        """``many`` for a write that returns rows (those it wrote, say), with ``params`` shared
        by every row. Returned rows need not follow the input's order."""
        ...


class Dialect(Protocol):
    """A storage backend. Created by the ``asyncgate_dialect`` hook, opened at startup."""

    name: str
    # Optional one-statement forms of general operations that this dialect's queries.sql
    # defines ("claim_at_once", "settle_under_lease"). Each writes only in the common case
    # and otherwise leaves the ledger to run the general path, so a dialect whose round trips
    # cost nothing (SQLite, in process) may define none.
    fast_paths: frozenset[str]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations (idempotent, safe concurrently); return those applied."""
        ...

    async def ping(self) -> bool: ...

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A read-write transaction, committed on clean exit and rolled back on error."""
        ...

    def autocommit(self) -> AbstractAsyncContextManager[Tx]:
        """Each statement commits on its own: for writes that are one statement."""
        ...

    def checked_write(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction for one write whose result the caller checks before it commits
        (raising in the block rolls it back); a dialect may run it more cheaply than
        ``transaction``, whose statements may be many."""
        ...

    def snapshot(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only transaction."""
        ...

    def stream(self, query: str, **params: Any) -> AsyncIterator[Row]:
        """Yield rows of a read query without holding them all in memory."""
        ...

    async def wait_for_tasks(self, tenant: str, timeout: float) -> None:
        """Return when a task may have become claimable in ``tenant``, or after ``timeout``."""
        ...

    def tasks_created(self, tenant: str) -> None:
        """Called after a commit that created tasks, to wake waiting claims."""
        ...


_QUERY_HEADER = re.compile(r"^--\s*([a-z_][a-z0-9_]*)\s*--\s*$", re.MULTILINE)


def load_queries(path: Path) -> dict[str, str]:
    """Parse a queries.sql: each query is headed ``-- name --``, then a comment line, then SQL."""
    text = path.read_text(encoding="utf-8")
    parts = _QUERY_HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sql = "\n".join(line for line in body.strip().splitlines() if not line.startswith("--"))
        queries[name] = sql.strip().rstrip(";")
    return queries


def migration_files(directory: Path) -> list[tuple[int, str, str]]:
    """Numbered migration files (``0001_initial.sql``) as (version, name, sql), in order."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        number = path.name.split("_", 1)[0]
        if number.isdigit():
            found.append((int(number), path.name, path.read_text(encoding="utf-8")))
    return found


class TaskSignal:
    """In-process wake-up for long-poll claims: one event per tenant, set when tasks appear.

    An event lives only while someone waits on it, so none outlives its event loop.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    async def wait(self, tenant: str, timeout: float) -> None:
        event = self._events.setdefault(tenant, asyncio.Event())
        self._waiters[tenant] = self._waiters.get(tenant, 0) + 1
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._waiters[tenant] -= 1
            if not self._waiters[tenant]:
                del self._waiters[tenant]
                if self._events.get(tenant) is event:
                    del self._events[tenant]

    def notify(self, tenant: str) -> None:
        event = self._events.pop(tenant, None)
        if event is not None:
            event.set()
