"""Domain operations. Each public method is one transaction against the storage dialect.

The request's way runs one direction: resources call the ledger, the ledger calls the
dialect, and after commit the ledger hands anomalies to the emitters.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from asyncgate import leases, receipts, termination
from asyncgate.coalesce import Coalescer
from asyncgate.errors import conflict, invalid, not_found
from asyncgate.ids import fingerprint, new_id, utcnow
from asyncgate.metrics import Metrics
from asyncgate.settings import Identity, Settings
from asyncgate.storage import (
    Dialect,
    Row,
    StorageUnavailable,
    TransientConflict,
    Tx,
    UniqueViolation,
)
from asyncgate.views import lease_is_live, obligation_receipt, receipt_view, task_view

Emit = Callable[[list[dict[str, Any]], str], Awaitable[None]]
# A unique violation means a concurrent request with the same idempotency key or
# receipt_id committed first; one more attempt then takes the replay path.
UNIQUE_RETRIES = 2
# A deadlock or serialization failure rolled everything back; rerunning is safe, briefly.
TRANSIENT_RETRIES = 5


class _NotAllWritten(Exception):
    """Rolls back a one-statement batch that skipped some of its rows."""


class Ledger:
    def __init__(self, dialect: Dialect, settings: Settings, metrics: Metrics, emit: Emit) -> None:
        self.dialect = dialect
        self.settings = settings
        self.metrics = metrics
        self.emit = emit
        # Shutdown has begun: long-poll claims stop waiting, so the server can drain.
        self._stopping = False
        self._waiting: Counter[str] = Counter()
        # Concurrent one-statement writes of a kind go to the database together.
        self._creates: Coalescer[list[Row], bool] = Coalescer(self._send_creates)
        self._claims: Coalescer[leases.Claim, list[dict[str, Any]] | None] = Coalescer(
            self._send_claims
        )
        self._appends: Coalescer[Row, Row | None] = Coalescer(
            lambda _, rows: self._write_at_once("append", "append_leased_receipt", rows)
        )
        self._settles: Coalescer[Row, Row | None] = Coalescer(
            lambda _, rows: self._write_at_once("settle", "settle_under_lease", rows)
        )
        self._joined_counts = {
            kind: metrics.joined_requests.labels(kind)
            for kind in ("create", "claim", "append", "settle")
        }
        # Each child looked up once (labels() validates and locks on every call); clients
        # write only these types.
        self._written_counts = {
            receipt_type: metrics.receipts_written.labels(receipt_type)
            for receipt_type in termination.CLIENT_TYPES
        }

    async def _in_transaction(self, work: Callable[[Tx, datetime], Awaitable[Any]]) -> Any:
        unique = transient = 0
        while True:
            try:
                async with self.dialect.transaction() as tx:
                    return await work(tx, utcnow())
            except UniqueViolation:
                unique += 1
                if unique >= UNIQUE_RETRIES:
                    raise conflict(
                        "concurrent_write", "a concurrent request wrote the same id; retry"
                    ) from None
            except TransientConflict as exc:
                transient += 1
                if transient >= TRANSIENT_RETRIES:
                    raise StorageUnavailable(f"contention persisted: {exc}") from exc
                await asyncio.sleep(random.uniform(0, 0.01 * 2**transient))

    async def _joined(self, kind: str, items: int, write: Callable[[], Awaitable[Any]]) -> Any:
        """Run the one-statement write of ``items`` joined requests.

        ``None`` when it failed in a way that each request should find out alone: one
        request's bad row must not fail the others, and a conflict or deadlock is for the
        general path. Nothing was written, as the write is one statement.
        """
        self._joined_counts[kind].observe(items)
        try:
            return await write()
        except StorageUnavailable:
            raise
        except (UniqueViolation, TransientConflict):
            return None
        except Exception:
            if items == 1:
                raise
            return None

    async def _write_at_once(self, kind: str, query: str, rows: list[Row]) -> list[Row | None]:
        """A fast-path receipt statement (see ``write_receipts``) for joined requests' rows:
        for each, the receipt it wrote, or ``None`` if it wrote nothing."""

        async def write() -> list[Row | None]:
            now = utcnow()
            async with self.dialect.autocommit() as tx:
                written = await tx.many_returning(query, rows, now=now)
            return receipts.merge_written(rows, written, now)

        merged = await self._joined(kind, len(rows), write)
        return [None] * len(rows) if merged is None else merged

    async def _send_creates(self, _: object, requests: list[list[Row]]) -> list[bool]:
        async def write() -> bool:
            async with self.dialect.autocommit() as tx:
                # Tasks, their obligation receipts and the wake-up hint: one statement.
                await tx.many("insert_tasks", [row for rows in requests for row in rows])
            return True

        done = await self._joined("create", len(requests), write)
        return [bool(done)] * len(requests)

    async def _send_claims(
        self, group: tuple[str, tuple[str, ...] | None], claims: list[leases.Claim]
    ) -> list[list[dict[str, Any]] | None]:
        tenant, types = group

        async def write() -> list[list[dict[str, Any]]] | None:
            async with self.dialect.autocommit() as tx:
                return await leases.claim_at_once(
                    tx, utcnow(), tenant, None if types is None else list(types), claims
                )

        grants = await self._joined("claim", len(claims), write)
        return [None] * len(claims) if grants is None else grants

    # Tasks -------------------------------------------------------------------------------

    async def create_tasks(
        self, identity: Identity, specs: list[dict[str, Any]], batch: bool
    ) -> list[tuple[dict[str, Any], bool]]:
        """Create tasks with their obligations; returns (task, created) per spec, in order."""
        keys = sorted({key for spec in specs if (key := spec.get("idempotency_key")) is not None})

        def plan(known: dict[str, Row], now: datetime) -> tuple[list[tuple[Row, bool]], list[Row]]:
            """Each spec's task (existing or new) and whether it is new; the rows to insert."""
            results: list[tuple[Row, bool]] = []
            new_tasks: list[Row] = []
            for index, spec in enumerate(specs):
                content = {
                    "type": spec["type"],
                    "payload": spec["payload"],
                    "principal": spec.get("principal") or identity.principal,
                    "priority": spec["priority"],
                }
                request_hash = fingerprint(content)
                key = spec.get("idempotency_key")
                if key is not None and (existing := known.get(key)) is not None:
                    if existing["request_hash"] != request_hash:
                        prefix = f"tasks.{index}." if batch else ""
                        raise conflict(
                            "idempotency_conflict",
                            "idempotency_key was already used with a different body",
                            f"{prefix}idempotency_key",
                        )
                    results.append((existing, False))
                    continue
                task = {
                    **content,
                    "tenant": identity.tenant,
                    "task_id": new_id(),
                    "created_by": identity.principal,
                    "idempotency_key": key,
                    "request_hash": request_hash,
                    "obligation_receipt_id": new_id(),
                    "created_at": now,
                }
                if key is not None:
                    known[key] = {**task, **_new_task_state(now)}
                new_tasks.append(task)
                results.append((task, True))
            return results, new_tasks

        def views(results: list[tuple[Row, bool]], now: datetime) -> list[tuple[Row, bool]]:
            return [
                (task_view({**task, **_new_task_state(now)} if created else task, now), created)
                for task, created in results
            ]

        if keys:

            async def work(tx: Tx, now: datetime) -> list[tuple[dict[str, Any], bool]]:
                rows = await tx.all("tasks_by_idempotency_keys", tenant=identity.tenant, keys=keys)
                results, new_tasks = plan({row["idempotency_key"]: row for row in rows}, now)
                await tx.many("insert_tasks", new_tasks)
                return views(results, now)

            results = await self._in_transaction(work)
        else:
            # Without idempotency keys nothing is read and the write is one statement, which
            # commits on its own, joined with concurrent requests' tasks.
            now = utcnow()
            planned, new_tasks = plan({}, now)
            if not await self._creates.submit(new_tasks, weight=len(new_tasks)):
                async with self.dialect.autocommit() as tx:
                    await tx.many("insert_tasks", new_tasks)
            results = views(planned, now)
        created = sum(1 for _, was_created in results if was_created)
        if created:
            self.metrics.tasks_created.inc(created)
            self.dialect.tasks_created(identity.tenant)
        return results

    async def get_task(self, identity: Identity, task_id: str) -> dict[str, Any]:
        async with self.dialect.snapshot() as tx:
            task = await tx.one("get_task", tenant=identity.tenant, task_id=task_id)
        if task is None:
            raise not_found(f"task {task_id}")
        return task_view(task, utcnow())

    async def list_tasks(
        self,
        identity: Identity,
        state: str | None,
        task_type: str | None,
        after: str | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        now = utcnow()
        async with self.dialect.snapshot() as tx:
            cursor = await _cursor(tx, "task_cursor", identity.tenant, after)
            rows = await tx.all(
                "list_tasks",
                tenant=identity.tenant,
                state=state,
                type=task_type,
                now=now,
                limit=limit,
                **cursor,
            )
        return [task_view(row, now) for row in rows]

    # Leases ------------------------------------------------------------------------------

    async def claim(
        self,
        identity: Identity,
        worker: str,
        types: list[str] | None,
        max_tasks: int,
        ttl_seconds: int,
        wait_seconds: float,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + wait_seconds
        at_once = "claim_at_once" in self.dialect.fast_paths
        while True:
            granted, anomalies = None, []
            if at_once:
                # Joined with concurrent claims of the same tenant and type filter.
                granted = await self._claims.submit(
                    leases.Claim(worker, max_tasks, ttl_seconds),
                    (identity.tenant, None if types is None else tuple(sorted(set(types)))),
                    weight=max_tasks,
                )
            if granted is None:
                granted, anomalies = await self._in_transaction(
                    lambda tx, now: leases.claim_once(
                        tx, now, identity, worker, types, max_tasks, ttl_seconds
                    )
                )
            if anomalies:
                await self.emit(anomalies, identity.tenant)
            remaining = deadline - time.monotonic()
            if granted or remaining <= 0 or self._stopping:
                self.metrics.leases_granted.inc(len(granted))
                return granted
            # Woken when tasks are created here; polling covers leases that expire meanwhile
            # and tasks created by other instances.
            self._waiting[identity.tenant] += 1
            try:
                await self.dialect.wait_for_tasks(identity.tenant, min(remaining, 1.0))
            finally:
                self._waiting[identity.tenant] -= 1
                if not self._waiting[identity.tenant]:
                    del self._waiting[identity.tenant]
            if self._stopping:
                return []

    def stop_waiting(self) -> None:
        """Shutdown has begun: answer every waiting long-poll claim now with ``[]``."""
        self._stopping = True
        for tenant in list(self._waiting):
            self.dialect.tasks_created(tenant)

    async def _current_lease(self, tx: Tx, tenant: str, lease_id: str, now: datetime) -> Row:
        lease = await tx.one("get_lease", tenant=tenant, lease_id=lease_id)
        if lease is None:
            raise not_found(f"lease {lease_id}")
        current = {
            "state": lease["task_state"],
            "lease_expires_at": lease["lease_expires_at"],
        }
        if lease["current_lease_id"] != lease_id or not lease_is_live(current, now):
            raise conflict(
                "lease_lost",
                "this lease has expired, been released or been superseded; "
                "authority is never revived, claim the task again",
            )
        return lease

    async def renew(
        self, identity: Identity, lease_id: str, ttl_seconds: int | None
    ) -> dict[str, Any]:
        ttl = ttl_seconds or self.settings.lease_default_ttl_seconds

        async def work(tx: Tx, now: datetime) -> dict[str, Any]:
            lease = await self._current_lease(tx, identity.tenant, lease_id, now)
            expires_at = now + timedelta(seconds=ttl)
            params = {"tenant": identity.tenant, "lease_id": lease_id, "expires_at": expires_at}
            await tx.run("renew_lease", task_id=lease["task_id"], now=now, **params)
            await tx.run("renew_lease_record", **params)
            return {"lease_id": lease_id, "expires_at": expires_at}

        return await self._in_transaction(work)

    async def release(self, identity: Identity, lease_id: str) -> None:
        async def work(tx: Tx, now: datetime) -> None:
            lease = await self._current_lease(tx, identity.tenant, lease_id, now)
            params = {"tenant": identity.tenant, "lease_id": lease_id, "now": now}
            await tx.run("release_lease", task_id=lease["task_id"], **params)
            await tx.run("end_lease_record", **params)
            await tx.run("notify_tasks", tenant=identity.tenant)

        await self._in_transaction(work)
        self.dialect.tasks_created(identity.tenant)

    # Receipts ----------------------------------------------------------------------------

    async def write_receipts(
        self, identity: Identity, specs: list[dict[str, Any]], batch: bool
    ) -> list[receipts.ReceiptResult]:
        """Write receipts in order, all or nothing."""
        results = None
        if batch:
            if (rows := self._settle_rows(identity, specs)) is not None:
                results = await self._settle_all_or_none(rows)
        else:
            # The fast paths: one statement, joined with concurrent requests' receipts.
            row = None
            if receipts.on_hot_path(specs[0]):
                row = await self._appends.submit(receipts.append_row(identity, specs[0]))
            elif "settle_under_lease" in self.dialect.fast_paths and (
                settle := receipts.settle_row(identity, specs[0])
            ):
                row = await self._settles.submit(settle)
            # None means a condition of the fast path failed; the general path below finds
            # out which.
            if row is not None:
                results = [receipts.written_at_once(row)]

        async def work(tx: Tx, now: datetime) -> list[receipts.ReceiptResult]:
            writes = await receipts.lock(tx, identity.tenant, specs)
            results = [
                await receipts.write(
                    tx, identity, spec, now, writes, f"receipts.{i}." if batch else ""
                )
                for i, spec in enumerate(specs)
            ]
            await receipts.flush(tx, writes)
            return results

        if results is None:
            results = await self._in_transaction(work)
        anomalies = [a for result in results if not result.replayed for a in result.anomalies]
        # One increment per type, not per receipt: a batch is mostly of one type.
        written: dict[str, int] = {}
        for result in results:
            if not result.replayed:
                receipt_type = result.receipt["type"]
                written[receipt_type] = written.get(receipt_type, 0) + 1
        for receipt_type, count in written.items():
            self._written_counts[receipt_type].inc(count)
        if anomalies:
            await self.emit(anomalies, identity.tenant)
        return results

    def _settle_rows(self, identity: Identity, specs: list[dict[str, Any]]) -> list[Row] | None:
        """A batch's rows for the ``settle_under_lease`` statement, if it may write the batch
        whole: terminating receipts on as many distinct tasks, each one for the statement."""
        if "settle_under_lease" not in self.dialect.fast_paths or len(
            {spec.get("task_id") for spec in specs}
        ) != len(specs):
            return None
        rows = []
        for spec in specs:
            if (row := receipts.settle_row(identity, spec)) is None:
                return None
            rows.append(row)
        return rows

    async def _settle_all_or_none(self, rows: list[Row]) -> list[receipts.ReceiptResult] | None:
        """Such a batch in one statement, all written or none: ``None`` when any row's
        conditions failed (the statement skips it), so the general path finds out which and
        answers for the batch as a whole."""
        now = utcnow()
        try:
            async with self.dialect.checked_write() as tx:
                written = await tx.many_returning("settle_under_lease", rows, now=now)
                merged = receipts.merge_written(rows, written, now)
                if None in merged:
                    raise _NotAllWritten
        except (_NotAllWritten, UniqueViolation, TransientConflict):
            return None
        return [receipts.written_at_once(row) for row in merged if row is not None]

    async def get_receipt(self, identity: Identity, receipt_id: str) -> dict[str, Any]:
        async with self.dialect.snapshot() as tx:
            receipt = await tx.one("get_receipt", tenant=identity.tenant, receipt_id=receipt_id)
        if receipt is None:
            raise not_found(f"receipt {receipt_id}")
        return receipt_view(receipt)

    async def list_receipts(
        self, identity: Identity, filters: dict[str, Any], after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        async with self.dialect.snapshot() as tx:
            cursor = await _cursor(tx, "receipt_cursor", identity.tenant, after)
            rows = await tx.all(
                "list_receipts", tenant=identity.tenant, limit=limit, **filters, **cursor
            )
        return [receipt_view(row) for row in rows]

    # Obligations -------------------------------------------------------------------------

    async def open_obligations_page(
        self, identity: Identity, after: str | None, limit: int
    ) -> list[dict[str, Any]]:
        async with self.dialect.snapshot() as tx:
            cursor = await _cursor(tx, "obligation_cursor", identity.tenant, after)
            rows = await tx.all("open_obligations", tenant=identity.tenant, limit=limit, **cursor)
        return [obligation_receipt(row) for row in rows]

    async def stream_open_obligations(
        self, identity: Identity, after: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Check the cursor now (a bad one is a 422, not a broken stream), then stream."""
        async with self.dialect.snapshot() as tx:
            cursor = await _cursor(tx, "obligation_cursor", identity.tenant, after)
        return self._open_obligation_rows(identity.tenant, cursor)

    async def _open_obligation_rows(
        self, tenant: str, cursor: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        async for row in self.dialect.stream(
            "open_obligations", tenant=tenant, limit=None, **cursor
        ):
            yield obligation_receipt(row)

    # Retention ---------------------------------------------------------------------------

    async def prune(
        self, cutoff: datetime, chunk: int = 500, progress: Callable[[int], None] | None = None
    ) -> int:
        """Delete closed tasks idle since before ``cutoff``, with their receipts and leases.

        Works in small transactions so concurrent writers are never blocked for long. Each
        delete re-checks that the obligation is still closed and the task still idle.
        """
        pruned = 0
        while True:

            async def work(tx: Tx, now: datetime) -> int:
                victims = await tx.all("prunable_tasks", cutoff=cutoff, limit=chunk)
                by_tenant: dict[str, list[str]] = {}
                for victim in victims:
                    by_tenant.setdefault(victim["tenant"], []).append(victim["task_id"])
                # Three set-based deletes per tenant keep each transaction (and SQLite's
                # write lock) short, so writers beside prune hardly wait.
                for tenant, task_ids in by_tenant.items():
                    params = {"tenant": tenant, "task_ids": task_ids, "cutoff": cutoff}
                    await tx.run("prune_receipts", **params)
                    await tx.run("prune_leases", **params)
                    await tx.run("prune_tasks", **params)
                return len(victims)

            count = await self._in_transaction(work)
            pruned += count
            if progress is not None:
                progress(pruned)
            if count < chunk:
                return pruned
            await asyncio.sleep(0)


async def _cursor(tx: Tx, query: str, tenant: str, after: str | None) -> dict[str, Any]:
    if after is None:
        return {"after_created_at": None, "after_id": None}
    row = await tx.one(query, tenant=tenant, id=after)
    if row is None:
        raise invalid("after", f"after={after} is not an id in this listing")
    return {"after_created_at": row["created_at"], "after_id": row["id"]}


def _new_task_state(now: datetime) -> dict[str, Any]:
    return {
        "state": "PENDING",
        "lease_id": None,
        "lease_worker": None,
        "lease_expires_at": None,
        "lease_generation": 0,
        "obligation_open": True,
        "obligation_closed_by": None,
        "updated_at": now,
    }
