"""The ledger invariants of test_invariants.py, under real concurrency, on both dialects.

Many clients drive one app at once for a few seconds of real time (leases of one second,
so they expire and are taken over mid-run): creators, workers that start, progress, renew,
release, finish or fall silent, workers replaying stale leases, and observers reading as
they go. Then, from what clients saw and what the database holds:
- a task is ACTIVE under at most one current lease: grants of a task have distinct, gapless
  generations, and each was granted only once its predecessor had ended or expired;
- fencing: no lease is honoured (receipt or renew) once a client has seen it superseded,
  released or ended, nor after its expiry;
- lease_generation never decreases, as each observer sees it;
- an obligation is open if and only if no terminating receipt names it;
- receipts are never modified; and no request ended in a 5xx.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from conftest import Tenants, app_settings
from realprocs import query
from test_invariants import closes

from asyncgate.app import create_app

SECONDS = 4.0
WORKERS = 8
OBSERVERS = 2
TERMINAL_TYPES = ("task.success", "task.failure", "task.cancelled")


def server_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


class World:
    """Everything clients saw: grants, answers with their client-side times, observations."""

    def __init__(self, app: falcon.testing.ASGIConductor, key: str) -> None:
        self.app = app
        self.headers = {"Authorization": f"Bearer {key}"}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.grants: list[dict[str, Any]] = []
        self.by_lease: dict[str, dict[str, Any]] = {}
        # When a client first learnt that a lease is no longer current (client clock).
        self.revoked_at: dict[str, float] = {}
        self.max_expiry: dict[str, datetime] = {}
        self.honoured: list[tuple[str, float, str]] = []  # (lease_id, sent_at, what)
        self.receipts: list[dict[str, Any]] = []
        self.statuses: dict[tuple[str, int], int] = defaultdict(int)
        self.seen_receipts: dict[str, dict[str, Any]] = {}
        self.deadline = 0.0

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, float, float]:
        sent = time.monotonic()
        result = await self.app.simulate_request(method, path, headers=self.headers, **kwargs)
        received = time.monotonic()
        self.statuses[(path.split("/")[2], result.status_code)] += 1
        assert result.status_code < 500, (path, result.status_code, result.text)
        return result, sent, received

    def revoke(self, lease_id: str, at: float) -> None:
        self.revoked_at[lease_id] = min(at, self.revoked_at.get(lease_id, at))

    def granted(self, grant: dict[str, Any], received: float) -> None:
        task_id = grant["task"]["task_id"]
        for earlier in self.grants:
            if earlier["task"]["task_id"] == task_id and earlier["lease_id"] != grant["lease_id"]:
                self.revoke(earlier["lease_id"], received)
        self.grants.append(grant)
        self.by_lease[grant["lease_id"]] = grant
        self.max_expiry[grant["lease_id"]] = server_time(grant["expires_at"])

    def running(self) -> bool:
        return time.monotonic() < self.deadline


async def creator(world: World) -> None:
    while world.running():
        if random.random() < 0.3:
            specs = [{"type": "job", "priority": random.randint(-2, 2)} for _ in range(3)]
            result, _, _ = await world.call("POST", "/v1/tasks/batch", json={"tasks": specs})
            assert result.status_code == 201
            created = result.json["tasks"]
        else:
            result, _, _ = await world.call("POST", "/v1/tasks", json={"type": "job"})
            assert result.status_code == 201
            created = [result.json]
        for task in created:
            world.tasks[task["task_id"]] = task
        await asyncio.sleep(random.uniform(0.02, 0.1))


async def write_receipt(world: World, grant: dict[str, Any], kind: str, **fields: Any) -> None:
    task = grant["task"]
    receipt = {"type": kind, "task_id": task["task_id"], **fields}
    if kind in TERMINAL_TYPES and random.random() < 0.8:
        receipt["parent_receipt_ids"] = [task["obligation_receipt_id"]]
        if random.random() < 0.2:
            # Delegation across tasks: naming another task's obligation closes it too.
            other = random.choice(list(world.tasks.values()))
            if other["task_id"] != task["task_id"]:
                receipt["parent_receipt_ids"].append(other["obligation_receipt_id"])
    if kind == "task.success" and random.random() < 0.7:
        receipt["artifacts"] = [{"uri": f"s3://out/{task['task_id']}"}]
    result, sent, received = await world.call("POST", "/v1/receipts", json=receipt)
    assert result.status_code in (201, 409), result.text
    if result.status_code == 201:
        world.receipts.append(result.json["receipt"])
        if "lease_id" in fields:
            world.honoured.append((fields["lease_id"], sent, kind))
        if kind in TERMINAL_TYPES:
            # A terminal receipt ends whatever lease the task had.
            for other in world.grants:
                if other["task"]["task_id"] == task["task_id"]:
                    world.revoke(other["lease_id"], received)


async def worker(world: World, number: int) -> None:
    name = f"worker:w{number}"
    while world.running():
        body = {"worker": name, "max_tasks": random.randint(1, 2), "ttl_seconds": 1}
        result, _, received = await world.call("POST", "/v1/leases", json=body)
        assert result.status_code == 200
        for grant in result.json:
            world.granted(grant, received)
        for grant in result.json:
            lease = {"lease_id": grant["lease_id"]}
            await write_receipt(world, grant, "task.started", **lease)
            roll = random.random()
            if roll < 0.15:
                continue  # fall silent: the lease expires and another worker takes over
            if roll < 0.3:
                renewed, sent, _ = await world.call(
                    "POST", f"/v1/leases/{grant['lease_id']}/renew", json={"ttl_seconds": 1}
                )
                assert renewed.status_code == 200 or renewed.status_code == 409
                if renewed.status_code == 200:
                    world.honoured.append((grant["lease_id"], sent, "renew"))
                    expiry = server_time(renewed.json["expires_at"])
                    world.max_expiry[grant["lease_id"]] = max(
                        world.max_expiry[grant["lease_id"]], expiry
                    )
            if roll < 0.45:
                released, _, received = await world.call(
                    "DELETE", f"/v1/leases/{grant['lease_id']}"
                )
                assert released.status_code in (204, 409)
                if released.status_code == 204:
                    world.revoke(grant["lease_id"], received)
                continue
            await write_receipt(world, grant, "task.progress", **lease, body={"pct": 50})
            kind = random.choice(TERMINAL_TYPES)
            extra = lease if random.random() < 0.6 else {}  # terminating receipts may delegate
            await write_receipt(world, grant, kind, **extra)
        if world.grants and random.random() < 0.3:
            # Replay an old lease: accepted only while it is still the current one.
            stale = random.choice(world.grants)
            await write_receipt(world, stale, "task.progress", lease_id=stale["lease_id"])
        if not result.json:
            await asyncio.sleep(0.02)


async def observer(world: World, generations: dict[str, int], seen: set[tuple[str, int]]) -> None:
    while world.running():
        if world.tasks:
            task_id = random.choice(list(world.tasks))
            result, _, _ = await world.call("GET", f"/v1/tasks/{task_id}")
            view = result.json
            assert view["lease_generation"] >= generations.get(task_id, 0), "generation fell"
            generations[task_id] = view["lease_generation"]
            assert (view["state"] == "ACTIVE") is (view["lease"] is not None)
            if view["lease"] is not None:
                assert view["lease"]["lease_generation"] == view["lease_generation"]
                seen.add((view["lease"]["lease_id"], view["lease_generation"]))
        page, _, _ = await world.call("GET", "/v1/receipts", params={"limit": "1000"})
        for receipt in page.json:
            first = world.seen_receipts.setdefault(receipt["receipt_id"], receipt)
            assert receipt == first, "a receipt changed"
        await asyncio.sleep(0.01)


async def all_pages(world: World, path: str, id_field: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, str] = {"limit": "1000"}
    while True:
        result, _, _ = await world.call("GET", path, params=params)
        assert result.status_code == 200
        items += result.json
        if len(result.json) < 1000:
            return items
        params["after"] = result.json[-1][id_field]


@pytest.mark.anyio
async def test_ledger_invariants_hold_under_concurrent_clients(
    database_url: str, tenants: Tenants, tmp_path: Path
) -> None:
    tenant = tenants.tenant["a"]
    async with falcon.testing.ASGIConductor(create_app(app_settings(database_url, tenants))) as app:
        world = World(app, tenants.keys["a"])
        world.deadline = time.monotonic() + SECONDS
        views: list[tuple[dict[str, int], set[tuple[str, int]]]] = [
            ({}, set()) for _ in range(OBSERVERS)
        ]
        await asyncio.gather(
            creator(world),
            creator(world),
            *(worker(world, n) for n in range(WORKERS)),
            *(observer(world, *view) for view in views),
        )
        final_tasks = {t["task_id"]: t for t in await all_pages(world, "/v1/tasks", "task_id")}
        ledger = await all_pages(world, "/v1/receipts", "receipt_id")
        open_ids = {
            o["receipt_id"] for o in await all_pages(world, "/v1/obligations/open", "receipt_id")
        }

    # The run exercised what it claims to: takeovers, fencing refusals, closed obligations.
    assert len(world.grants) > 30 and world.statuses[("receipts", 409)] > 0
    assert any(r["type"] == "system.anomaly.lease_expired" for r in ledger), "no takeover"
    assert len(world.revoked_at) > 10 and len(open_ids) < len(world.tasks)

    # At most one current lease: distinct gapless generations, each granted only after its
    # predecessor had been released or had expired, by the database's own record. (A lease
    # that a terminal receipt ended has no successor: its task is terminal for good.)
    leases = query(
        database_url,
        "SELECT task_id, generation, lease_id, granted_at, expires_at, released_at FROM leases"
        " WHERE tenant = %s ORDER BY task_id, generation",
        (tenant,),
    )
    by_task: dict[str, list[tuple]] = defaultdict(list)
    for row in leases:
        by_task[str(row[0])].append(row)
    for task_id, rows in by_task.items():
        assert [row[1] for row in rows] == list(range(1, len(rows) + 1)), task_id
        assert final_tasks[task_id]["lease_generation"] == len(rows)
        for previous, following in zip(rows, rows[1:], strict=False):
            ended = previous[5] is not None
            expired = server_time(previous[4]) <= server_time(following[3])
            assert ended or expired, f"two live leases on task {task_id}: {previous} {following}"
    assert {g["lease_id"] for g in world.grants} == {str(row[2]) for row in leases}
    for _, seen in views:
        for lease_id, generation in seen:
            assert world.by_lease[lease_id]["lease_generation"] == generation

    # Fencing, judged in real time: nothing is honoured under a lease after a client had seen
    # it superseded, released or ended, nor (by the server's clock) after it expired.
    for lease_id, sent, what in world.honoured:
        revoked = world.revoked_at.get(lease_id)
        assert revoked is None or sent < revoked, f"{what} honoured on a revoked lease"
    for receipt in world.receipts:
        if receipt["lease_id"] is not None:
            created = server_time(receipt["created_at"])
            assert created < world.max_expiry[receipt["lease_id"]], receipt

    # Obligations are open if and only if no terminating receipt (of any task) names them.
    naming: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for receipt in ledger:
        for parent in receipt["parent_receipt_ids"]:
            naming[parent].append(receipt)
    assert set(final_tasks) == set(world.tasks)
    for task in final_tasks.values():
        obligation = task["obligation_receipt_id"]
        closed = any(closes(r, obligation) for r in naming[obligation])
        assert task["obligation_open"] is (not closed), task
        assert (obligation in open_ids) is (not closed), task

    # Receipts are never modified: every version anyone saw is the stored one.
    stored = {r["receipt_id"]: r for r in ledger}
    for receipt in [*world.receipts, *world.seen_receipts.values()]:
        assert stored[receipt["receipt_id"]] == receipt
