"""Faults under load, against a real ``uvicorn asyncgate.main:app``: nothing acknowledged is
lost, nothing is half-written, nothing hangs.

- PostgreSQL restarted mid-load (a private cluster: the shared server is never touched);
- AsyncGate killed with SIGKILL during a write storm, on both dialects;
- the Redis of the rate limiter killed or frozen mid-load (a private redis-server).
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import Tenants
from load import CLIENT_TIMEOUT, Load, Outcome
from realprocs import AsyncGateServer, PrivateCluster, PrivateRedis, query, wait_for

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


# fast: a clean restart (backends terminated, checkpoint). immediate: a crash, recovered from
# the WAL on start, which must still hold every transaction that was acknowledged.
@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
def test_postgres_restart_under_load_answers_503_then_recovers_losing_nothing(
    stop_mode: str, private_cluster: PrivateCluster, tenants: Tenants, tmp_path: Path
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
            cluster.stop(stop_mode)
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


# AsyncGate killed with SIGKILL mid-write -----------------------------------------------


class SQL:
    """The few expressions the consistency checks need, in each dialect's words."""

    def __init__(self, url: str) -> None:
        self.pg = url.startswith("postgresql")

    def names(self, parents: str, receipt_id: str) -> str:
        if self.pg:
            return f"{receipt_id} = ANY({parents})"
        return f"EXISTS (SELECT 1 FROM json_each({parents}) WHERE value = {receipt_id})"

    def field(self, column: str, key: str) -> str:
        return f"{column}->>'{key}'" if self.pg else f"json_extract({column}, '$.{key}')"

    def evidence(self, r: str) -> str:
        if self.pg:
            return (
                f"(jsonb_array_length({r}.artifacts) > 0 OR ({r}.delivery_proof IS NOT NULL"
                f" AND {r}.delivery_proof <> '{{}}'::jsonb))"
            )
        return (
            f"(json_array_length({r}.artifacts) > 0 OR ({r}.delivery_proof IS NOT NULL"
            f" AND {r}.delivery_proof <> '{{}}'))"
        )

    def terminating(self, r: str) -> str:
        """Receipt ``r`` terminates the obligations it names (the truth table)."""
        return (
            f"({r}.type IN ('task.failure', 'task.cancelled')"
            f" OR ({r}.type = 'task.success' AND {self.evidence(r)}))"
        )

    def named_open_obligations(self) -> str:
        """Open obligations that some terminating receipt of their tenant names."""
        parents = (
            "CROSS JOIN LATERAL unnest(r.parent_receipt_ids) AS p(id)"
            if self.pg
            else "CROSS JOIN json_each(r.parent_receipt_ids) AS p"
        )
        parent = "p.id" if self.pg else "p.value"
        return (
            f"SELECT t.task_id FROM receipts r {parents} JOIN tasks t ON t.tenant = r.tenant"
            f" AND t.obligation_receipt_id = {parent}"
            f" WHERE t.obligation_open AND {self.terminating('r')}"
        )


def consistency_violations(url: str) -> dict[str, list[tuple]]:
    """Every half-written state the ledger must never be left in, as offending rows."""
    sql = SQL(url)
    checks = {
        "task without exactly its obligation": (
            "SELECT t.task_id FROM tasks t WHERE (SELECT count(*) FROM receipts r"
            " WHERE r.tenant = t.tenant AND r.task_id = t.task_id AND r.type = 'task.assigned')"
            " <> 1 OR NOT EXISTS (SELECT 1 FROM receipts r WHERE r.tenant = t.tenant"
            " AND r.receipt_id = t.obligation_receipt_id AND r.task_id = t.task_id)"
        ),
        "receipt without its task": (
            "SELECT r.receipt_id FROM receipts r WHERE NOT EXISTS (SELECT 1 FROM tasks t"
            " WHERE t.tenant = r.tenant AND t.task_id = r.task_id)"
        ),
        # A terminating receipt closes every obligation it names, of any task of the tenant.
        "obligation closed without its terminating receipt": (
            "SELECT t.task_id FROM tasks t WHERE NOT t.obligation_open AND NOT EXISTS"
            " (SELECT 1 FROM receipts r WHERE r.tenant = t.tenant"
            " AND r.receipt_id = t.obligation_closed_by"
            f" AND {sql.names('r.parent_receipt_ids', 't.obligation_receipt_id')}"
            f" AND {sql.terminating('r')})"
        ),
        "obligation open though a terminating receipt names it": sql.named_open_obligations(),
        "terminal state without its receipt": (
            "SELECT t.task_id, t.state FROM tasks t WHERE t.state IN ('COMPLETED', 'FAILED',"
            " 'CANCELLED') AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.tenant = t.tenant"
            " AND r.task_id = t.task_id AND r.type IN ('task.success', 'task.failure',"
            " 'task.cancelled'))"
        ),
        "active task without its lease record": (
            "SELECT t.task_id FROM tasks t WHERE t.state = 'ACTIVE' AND NOT EXISTS (SELECT 1"
            " FROM leases l WHERE l.tenant = t.tenant AND l.lease_id = t.lease_id"
            " AND l.generation = t.lease_generation)"
        ),
        "stripped success without its anomaly": (
            "SELECT r.receipt_id FROM receipts r WHERE r.stripped_parent_receipt_ids IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM receipts a WHERE a.tenant = r.tenant"
            " AND a.type = 'system.anomaly.locatability_missing'"
            f" AND {sql.names('a.parent_receipt_ids', 'r.receipt_id')})"
        ),
        "partial task batch": (
            f"SELECT {sql.field('payload', 'batch')}, count(*) FROM tasks"
            f" WHERE {sql.field('payload', 'batch')} IS NOT NULL GROUP BY 1"
            f" HAVING count(*) <> max(CAST({sql.field('payload', 'size')} AS INTEGER))"
        ),
        "partial receipt batch": (
            f"SELECT {sql.field('body', 'batch')}, count(*) FROM receipts"
            f" WHERE {sql.field('body', 'batch')} IS NOT NULL GROUP BY 1"
            f" HAVING count(*) <> max(CAST({sql.field('body', 'size')} AS INTEGER))"
        ),
    }
    found = {name: query(url, statement) for name, statement in checks.items()}
    return {name: rows for name, rows in found.items() if rows}


def storm_step(acked: Ledger):
    """Four kinds of writers: single tasks, task batches, receipt batches, leased work."""

    def step(load: Load, http: httpx.Client, worker: int, n: int) -> None:
        role = worker % 4
        if role == 0:
            acked.created(load.call(http, "POST", "/v1/tasks", json={"type": "storm"}))
        elif role == 1:
            marker = uuid.uuid4().hex
            specs = [{"type": "storm", "payload": {"batch": marker, "size": 20}}] * 20
            acked.created(load.call(http, "POST", "/v1/tasks/batch", json={"tasks": specs}))
        elif role == 2:
            tasks = acked.created(
                load.call(http, "POST", "/v1/tasks/batch", json={"tasks": [{"type": "rb"}] * 8})
            )
            if not tasks:
                return
            body = {"batch": uuid.uuid4().hex, "size": len(tasks) + 1}
            receipts = [
                {
                    "type": "task.success" if i % 2 else "task.failure",
                    "task_id": task["task_id"],
                    "parent_receipt_ids": [task["obligation_receipt_id"]],
                    "artifacts": [{"uri": f"s3://b/{i}"}] if i % 2 else [],
                    "body": body,
                }
                for i, task in enumerate(tasks)
            ]
            # A success without evidence: stripped, with its anomaly in the same transaction.
            receipts.append(
                {
                    "type": "task.success",
                    "task_id": tasks[0]["task_id"],
                    "parent_receipt_ids": [tasks[0]["obligation_receipt_id"]],
                    "body": body,
                }
            )
            acked.written(
                load.call(http, "POST", "/v1/receipts/batch", json={"receipts": receipts})
            )
        else:
            acked.created(load.call(http, "POST", "/v1/tasks", json={"type": f"leased{worker}"}))
            claim = load.call(
                http,
                "POST",
                "/v1/leases",
                json={"worker": "worker:w", "types": [f"leased{worker}"]},
            )
            if claim.status != 200 or not orjson.loads(claim.body):
                return
            grant = orjson.loads(claim.body)[0]
            common = {"task_id": grant["task"]["task_id"], "lease_id": grant["lease_id"]}
            acked.written(
                load.call(http, "POST", "/v1/receipts", json={"type": "task.started", **common})
            )
            final = {
                "type": "task.failure",
                "parent_receipt_ids": [grant["task"]["obligation_receipt_id"]],
                **common,
            }
            acked.written(load.call(http, "POST", "/v1/receipts", json=final))

    return step


def test_sigkill_mid_write_storm_leaves_nothing_half_written(
    private_database_url: str, tenants: Tenants, tmp_path: Path
) -> None:
    env = server_env(private_database_url, tenants)
    acked = Ledger()
    server = AsyncGateServer(env, tmp_path / "uvicorn.log")
    with server:
        load = Load(server.url, tenants.keys["a"], storm_step(acked), threads=8).start()
        try:
            wait_for(lambda: len(acked.receipts) > 40, 20, "the write storm did not get going")
            time.sleep(random.uniform(0.2, 0.8))
            server.signal(signal.SIGKILL)
            server.wait(10)
            killed = time.monotonic()
        finally:
            load.stop()
    # Answers before the kill are 2xx; afterwards the connection drops (no answer at all).
    answered = [o for o in load.outcomes if o.status is not None]
    assert_only(answered, {200, 201})
    assert all(o.ended >= killed - 1 for o in load.outcomes if o.status is None)

    # The service starts again on the same database (SQLite replays its WAL) and writes.
    with AsyncGateServer(env, tmp_path / "restart.log") as again:
        health = httpx.get(f"{again.url}/v1/health", timeout=CLIENT_TIMEOUT)
        assert health.status_code == 200, health.text
        auth = {"Authorization": f"Bearer {tenants.keys['a']}"}
        write = httpx.post(f"{again.url}/v1/tasks", json={"type": "after"}, headers=auth)
        assert write.status_code == 201, write.text

    assert_every_acknowledged_write_is_stored(private_database_url, acked)
    assert consistency_violations(private_database_url) == {}
    batches = query(
        private_database_url,
        f"SELECT count(DISTINCT {SQL(private_database_url).field('payload', 'batch')}) FROM tasks",
    )
    assert batches[0][0] > 0, "no task batch was committed: the storm proved nothing"


# The rate limiter's Redis lost under load ------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server.start()
    finally:
        server.stop()


def reader_step(load: Load, http: httpx.Client, worker: int, n: int) -> None:
    load.call(http, "GET", "/v1/tasks", params={"limit": "1"})
    time.sleep(0.01)


@pytest.mark.parametrize("fault", ["killed", "frozen"])
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_loss_fails_open_or_closed_without_hanging_and_recovers(
    mode: str, fault: str, private_redis: PrivateRedis, tenants: Tenants, tmp_path: Path
) -> None:
    redis_server = private_redis
    env = server_env(
        f"sqlite:///{tmp_path / 'rl.db'}",
        tenants,
        RATE_LIMIT_ACTIVE="true",
        RATE_LIMIT_BACKEND="redis",
        RATE_LIMIT_REDIS_URL=redis_server.url,
        RATE_LIMIT_DEFAULT_CALLS="1000000",
        RATE_LIMIT_FAILURE_MODE=mode,
    )
    with AsyncGateServer(env, tmp_path / "uvicorn.log") as server:
        load = Load(server.url, tenants.keys["a"], reader_step, threads=3).start()
        try:
            time.sleep(1.0)
            failed = time.monotonic()
            # Killed: connections are refused. Frozen (SIGSTOP): they are accepted and never
            # answered, the case where only a timeout stands between a request and a hang.
            redis_server.kill() if fault == "killed" else redis_server.freeze()
            time.sleep(2.5)
            health = httpx.get(f"{server.url}/v1/health", timeout=CLIENT_TIMEOUT)
            restored = time.monotonic()
            redis_server.start() if fault == "killed" else redis_server.thaw()
            recovered_after = wait_for(
                lambda: any(o.rate_limited_headers for o in load.after(restored)),
                10,
                "the rate limiter did not use Redis again after it came back",
            )
            time.sleep(1.5)
        finally:
            load.stop()

    outcomes = load.outcomes
    assert_only(outcomes, {200, 503} if mode == "closed" else {200})
    slowest = max(o.seconds for o in outcomes)
    # One Redis timeout (0.25 s) at most, with room for a loaded machine.
    assert slowest < 2.0, f"a request took {slowest:.2f}s while Redis was {fault}"
    before = load.between(0, failed)
    assert before and all(o.status == 200 and o.rate_limited_headers for o in before)
    # A request already in Redis's hands when it failed may still get through, in either mode.
    down = load.between(failed + 0.5, restored)
    assert len(down) > 10
    if mode == "open":
        assert {o.status for o in down} == {200}, describe(down)
    else:
        assert {o.status for o in down} == {503}, describe(down)
        for outcome in down:
            assert outcome.retry_after and outcome.retry_after.isdigit()
            assert outcome.content_type == PROBLEM_JSON
            assert orjson.loads(outcome.body)["code"] == "rate_limit_unavailable"
    assert health.status_code == 200, "health is exempt from the limiter, and storage is fine"
    assert recovered_after < 5
    settled = load.after(restored + recovered_after + 0.5)
    assert settled and all(o.status == 200 and o.rate_limited_headers for o in settled)
