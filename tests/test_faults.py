"""Faults under load, against a real ``uvicorn asyncgate.main:app``: nothing acknowledged is
lost, nothing is half-written, nothing hangs.

- PostgreSQL restarted mid-load (a private cluster: the shared server is never touched);
- AsyncGate killed with SIGKILL during a write storm, on both dialects;
- the Redis of the rate limiter killed or frozen mid-load (a private redis-server).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import Tenants
from load import CLIENT_TIMEOUT, Load, Outcome
from realprocs import AsyncGateServer, PrivateCluster, query, wait_for

PROBLEM_JSON = "application/problem+json"


def server_env(url: str, tenants: Tenants, **overrides: str) -> dict[str, str]:
    return {
        "ASYNCGATE_DATABASE_URL": url,
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
        **{f"ASYNCGATE_{name}": value for name, value in overrides.items()},
    }


def describe(outcomes: list[Outcome]) -> str:
    counts: dict[object, int] = {}
    for outcome in outcomes:
        counts[outcome.status or outcome.error] = counts.get(outcome.status or outcome.error, 0) + 1
    return repr(counts)


class Ledger:
    """What the service acknowledged (a 2xx), by id: the claims the database must honour."""

    def __init__(self) -> None:
        self.tasks: dict[str, str] = {}  # task_id -> obligation_receipt_id
        self.receipts: dict[str, str] = {}  # receipt_id -> task_id

    def created(self, outcome: Outcome) -> list[dict]:
        if outcome.status not in (200, 201):
            return []
        body = orjson.loads(outcome.body)
        tasks = body.get("tasks", [body])
        for task in tasks:
            self.tasks[task["task_id"]] = task["obligation_receipt_id"]
        return tasks

    def written(self, outcome: Outcome) -> None:
        if outcome.status in (200, 201):
            body = orjson.loads(outcome.body)
            for result in body.get("results", [body]):
                receipt = result["receipt"]
                self.receipts[receipt["receipt_id"]] = receipt["task_id"]


def writer_step(acked: Ledger, batch: int = 5):
    """Create a task (every fifth step a batch) and close each obligation with evidence."""

    def step(load: Load, http: httpx.Client, worker: int, n: int) -> None:
        if n % 5 == 0:
            specs = [
                {"type": "fault", "payload": {"w": worker, "n": n, "i": i}} for i in range(batch)
            ]
            outcome = load.call(http, "POST", "/v1/tasks/batch", json={"tasks": specs})
        else:
            outcome = load.call(
                http, "POST", "/v1/tasks", json={"type": "fault", "payload": {"w": worker, "n": n}}
            )
        tasks = acked.created(outcome)
        for task in tasks[:2]:
            receipt = {
                "type": "task.success",
                "task_id": task["task_id"],
                "receipt_id": str(uuid.uuid4()),
                "parent_receipt_ids": [task["obligation_receipt_id"]],
                "artifacts": [{"uri": f"s3://out/{task['task_id']}"}],
            }
            acked.written(load.call(http, "POST", "/v1/receipts", json=receipt))
        if outcome.status is not None and outcome.status >= 500:
            time.sleep(0.05)  # a real client would honour Retry-After; keep probing the outage

    return step


def assert_only(outcomes: list[Outcome], allowed: set[int]) -> None:
    bad = [o for o in outcomes if o.status not in allowed]
    assert not bad, f"unexpected answers {describe(bad)}: {bad[:3]}"


def assert_every_acknowledged_write_is_stored(url: str, acked: Ledger) -> None:
    tasks = dict(query(url, "SELECT task_id::text, obligation_receipt_id::text FROM tasks"))
    missing = {t for t in acked.tasks if t not in tasks}
    assert not missing, f"{len(missing)} acknowledged tasks lost, e.g. {sorted(missing)[:3]}"
    assert all(tasks[t] == o for t, o in acked.tasks.items())
    receipts = dict(query(url, "SELECT receipt_id::text, task_id::text FROM receipts"))
    lost = {r for r in acked.receipts if receipts.get(r) != acked.receipts[r]}
    assert not lost, f"{len(lost)} acknowledged receipts lost, e.g. {sorted(lost)[:3]}"


# PostgreSQL restarted under load --------------------------------------------------------


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster()
    try:
        yield cluster.create()
    finally:
        cluster.destroy()


def test_postgres_restart_under_load_answers_503_then_recovers_losing_nothing(
    private_cluster: PrivateCluster, tenants: Tenants, tmp_path: Path
) -> None:
    cluster = private_cluster
    server = AsyncGateServer(server_env(cluster.url, tenants), tmp_path / "uvicorn.log")
    acked = Ledger()
    with server:
        pid = server.process.pid
        load = Load(server.url, tenants.keys["a"], writer_step(acked), threads=4).start()
        try:
            time.sleep(1.5)
            stopping = time.monotonic()
            cluster.stop("fast")
            stopped = time.monotonic()
            time.sleep(0.5)
            health = httpx.get(f"{server.url}/v1/health", timeout=CLIENT_TIMEOUT)
            time.sleep(2.5)
            starting = time.monotonic()
            cluster.start()
            started = time.monotonic()
            recovered_after = wait_for(
                lambda: any(o.status in (200, 201) for o in load.after(started)),
                15,
                "AsyncGate did not serve again after PostgreSQL came back",
            )
            time.sleep(3)
        finally:
            load.stop()
        assert server.process.poll() is None and server.process.pid == pid, "AsyncGate restarted"

    outcomes = load.outcomes
    assert_only(outcomes, {200, 201, 503})
    slowest = max(o.seconds for o in outcomes)
    assert slowest < CLIENT_TIMEOUT, f"a request took {slowest:.1f}s"
    before = load.between(0, stopping)
    assert before and all(o.status in (200, 201) for o in before), describe(before)
    down = load.between(stopped + 0.2, starting)
    assert down, "no request was made while PostgreSQL was down"
    assert {o.status for o in down} == {503}, describe(down)
    for outcome in down:
        assert outcome.retry_after and outcome.retry_after.isdigit()
        assert outcome.content_type == PROBLEM_JSON
        assert orjson.loads(outcome.body)["code"] == "storage_unavailable"
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert recovered_after < 5, f"recovery took {recovered_after:.1f}s after PostgreSQL was back"
    settled = load.after(started + recovered_after + 1)
    assert settled and all(o.status in (200, 201) for o in settled), describe(settled)

    assert len(acked.tasks) > 20 and len(acked.receipts) > 10
    assert_every_acknowledged_write_is_stored(cluster.url, acked)
    # Every task, acknowledged or not, has exactly one obligation.
    orphans = query(
        cluster.url,
        "SELECT t.task_id FROM tasks t WHERE (SELECT count(*) FROM receipts r WHERE r.tenant ="
        " t.tenant AND r.task_id = t.task_id AND r.type = 'task.assigned') <> 1"
        " OR NOT EXISTS (SELECT 1 FROM receipts r WHERE r.tenant = t.tenant"
        " AND r.receipt_id = t.obligation_receipt_id AND r.type = 'task.assigned')",
    )
    assert orphans == []
