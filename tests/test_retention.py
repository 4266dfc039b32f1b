"""Retention while writers are active: ``asyncgate prune`` deletes only what the SPEC allows.

Forty days of history is written under a shifted clock: closed tasks, and tasks whose
obligation is still open in every way it can be (pending, leased and silent, FAILED without
naming the obligation, COMPLETED by a success without evidence). Then the real ``asyncgate
prune`` command runs in its own process while clients write: on old open tasks, on new
tasks, and on the very closed tasks being pruned. Never is an open obligation removed, nor
any receipt of a task whose obligation is open; pruned tasks go whole; nothing dangles.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from conftest import Tenants
from realprocs import query
from test_faults import consistency_violations

from asyncgate import ledger as ledger_module
from asyncgate.app import create_app
from asyncgate.ids import utcnow
from asyncgate.settings import Settings

CLOSED_OLD = 700
OPEN_OLD = 40  # of each kind


class Client:
    def __init__(self, app: falcon.testing.ASGIConductor, key: str) -> None:
        self.app = app
        self.headers = {"Authorization": f"Bearer {key}"}
        self.acked: dict[str, set[str]] = defaultdict(set)  # task_id -> receipt ids

    async def post(self, path: str, body: dict[str, Any], *ok: int) -> Any:
        result = await self.app.simulate_post(path, headers=self.headers, json=body)
        assert result.status_code in ok, (path, result.status_code, result.text)
        return result

    async def tasks(self, count: int, kind: str) -> list[dict[str, Any]]:
        specs = [{"type": kind, "payload": {"n": n}} for n in range(count)]
        created = (await self.post("/v1/tasks/batch", {"tasks": specs}, 201)).json["tasks"]
        for task in created:
            self.acked[task["task_id"]].add(task["obligation_receipt_id"])
        return created

    async def receipts(self, receipts: list[dict[str, Any]], *ok: int) -> Any:
        result = await self.post("/v1/receipts/batch", {"receipts": receipts}, 201, *ok)
        if result.status_code == 201:
            for outcome in result.json["results"]:
                receipt = outcome["receipt"]
                self.acked[receipt["task_id"]].add(receipt["receipt_id"])
                self.acked[receipt["task_id"]].update(outcome["anomalies"])
        return result

    async def claim(self, kind: str, count: int) -> list[dict[str, Any]]:
        body = {"worker": "worker:r", "types": [kind], "max_tasks": count, "ttl_seconds": 60}
        return (await self.post("/v1/leases", body, 200)).json


def closing(task: dict[str, Any], kind: str = "task.failure", **extra: Any) -> dict[str, Any]:
    parents = {"parent_receipt_ids": [task["obligation_receipt_id"]]}
    return {"type": kind, "task_id": task["task_id"], **parents, **extra}


async def write_history(client: Client) -> tuple[list[dict], list[dict]]:
    """Old closed tasks, and old tasks whose obligation is open in each possible way."""
    closed: list[dict[str, Any]] = []
    for _ in range(CLOSED_OLD // 350):
        batch = await client.tasks(350, "old-closed")
        await client.receipts([closing(task) for task in batch])
        closed += batch
    pending = await client.tasks(OPEN_OLD, "old-pending")
    leased = await client.tasks(OPEN_OLD, "old-leased")
    for grant in await client.claim("old-leased", OPEN_OLD):
        started = {"type": "task.started", "task_id": grant["task"]["task_id"]}
        await client.receipts([{**started, "lease_id": grant["lease_id"]}])
    failed = await client.tasks(OPEN_OLD, "old-failed")
    # A failure that does not name the obligation: the task is FAILED, the obligation open.
    await client.receipts([{"type": "task.failure", "task_id": t["task_id"]} for t in failed])
    unproven = await client.tasks(OPEN_OLD, "old-unproven")
    # A success without evidence: stored stripped, with an anomaly; the obligation stays open.
    await client.receipts([closing(task, "task.success") for task in unproven])
    return closed, pending + leased + failed + unproven


async def writers_until(
    client: Client, pruning: asyncio.Event, done: asyncio.Event, closed: list
) -> set:
    """Write everywhere prune looks while it runs; returns the old closed tasks touched."""
    touched: set[str] = set()
    targets = closed[:]
    random.shuffle(targets)
    # Only half are raced: the other half stays idle, so prune must remove it whole even if
    # SQLite's busy handler lets the writers win every contested lock.
    targets = targets[: len(targets) // 2]

    async def touch_closed() -> None:
        # A later receipt on a closed task makes it recent again; prune must either keep
        # the task whole or have removed it first (then this is a 404, never half of each).
        # Touches begin with the prune, so the two really race over the same rows.
        await pruning.wait()
        while not done.is_set() and targets:
            task = targets.pop()
            result = await client.receipts([closing(task, "task.cancelled")], 404)
            if result.status_code == 201:
                touched.add(task["task_id"])
            await asyncio.sleep(0)

    async def work_old_open() -> None:
        while not done.is_set():
            for grant in await client.claim("old-pending", 3):
                lease = {"task_id": grant["task"]["task_id"], "lease_id": grant["lease_id"]}
                await client.receipts([{"type": "task.started", **lease}])
            await asyncio.sleep(0.01)

    async def new_work() -> None:
        while not done.is_set():
            fresh = await client.tasks(5, "new")
            await client.receipts([closing(task) for task in fresh[:2]])
            await asyncio.sleep(0.01)

    await asyncio.gather(touch_closed(), work_old_open(), new_work())
    return touched


@pytest.mark.anyio
async def test_prune_beside_writers_removes_only_closed_idle_tasks_whole(
    private_database_url: str, tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "ASYNCGATE_ENV": "test",
        "ASYNCGATE_DATABASE_URL": private_database_url,
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
    }
    tenant = tenants.tenant["a"]
    async with falcon.testing.ASGIConductor(create_app(Settings.from_env(env))) as app:
        client = Client(app, tenants.keys["a"])
        monkeypatch.setattr(ledger_module, "utcnow", lambda: utcnow() - timedelta(days=40))
        closed, old_open = await write_history(client)
        monkeypatch.setattr(ledger_module, "utcnow", utcnow)
        before = receipts_by_task(private_database_url, tenant)

        # Old closed tasks with recent activity are not idle: prune must leave them whole.
        recent, racing = closed[:100], closed[100:]
        await client.receipts([closing(task, "task.cancelled") for task in recent])
        pruning, done = asyncio.Event(), asyncio.Event()
        writers = asyncio.create_task(writers_until(client, pruning, done, racing))
        await asyncio.sleep(0.2)  # writers are going before prune starts
        prune = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("asyncgate")),
            "prune",
            "--days",
            "30",
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert prune.stderr is not None
        first = await asyncio.wait_for(prune.stderr.readline(), 30)  # "pruning closed tasks…"
        pruning.set()
        out, err = await asyncio.wait_for(prune.communicate(), 60)
        err = first + err
        await asyncio.sleep(0.2)  # and still going after it ends
        done.set()
        touched = await writers | {task["task_id"] for task in recent}
    assert prune.returncode == 0, err.decode()

    after = receipts_by_task(private_database_url, tenant)
    task_rows = dict(query(private_database_url, "SELECT task_id, obligation_open FROM tasks"))
    task_rows = {str(k): bool(v) for k, v in task_rows.items()}
    # No open obligation was removed, nor any receipt of its task: not of the old open
    # tasks (open when prune began), nor of any task open now, nor of any new task.
    for task in old_open:
        assert task["task_id"] in task_rows, "an open obligation was pruned"
        assert before[task["task_id"]] <= after[task["task_id"]]
    for task_id, acked in client.acked.items():
        if task_rows.get(task_id) or task_id not in before:
            assert acked <= after[task_id], "a receipt of an open or recent task was pruned"
    # The closed old tasks that a writer touched survive whole; the others are gone whole.
    untouched = [t["task_id"] for t in closed if t["task_id"] not in touched]
    for task_id in touched:
        assert task_id in task_rows and client.acked[task_id] <= after[task_id]
    assert not [t for t in untouched if t in task_rows or t in after], "not pruned whole"
    leases_left = query(private_database_url, "SELECT DISTINCT task_id FROM leases")
    assert not {str(row[0]) for row in leases_left} - set(task_rows), "lease of a pruned task"
    assert consistency_violations(private_database_url) == {}
    assert int(out.decode().split()[1]) >= len(untouched)  # "pruned N tasks with ..."
    assert touched and untouched, "the race was never run"


def receipts_by_task(url: str, tenant: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    rows = query(url, "SELECT task_id, receipt_id FROM receipts WHERE tenant = %s", (tenant,))
    for task_id, receipt_id in rows:
        found[str(task_id)].add(str(receipt_id))
    return found
