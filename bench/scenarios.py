"""The benchmark's measurements. Each returns rates or times; bench/run.py turns them into ratios."""

from __future__ import annotations

import asyncio
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from http_client import Connection

ARTIFACT = [{"uri": "s3://bench/result.json", "media_type": "application/json"}]


@dataclass
class Context:
    port: int
    database_url: str
    keys: dict[str, str]
    connections: int
    duration: float
    quick: bool
    wrk: str
    workdir: Path
    log: Callable[[str], None]
    server_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    async def connect(self, tenant: str) -> Connection:
        return await Connection("127.0.0.1", self.port, self.keys[tenant]).open()


async def for_duration(ctx: Context, worker: Callable[[Connection], Awaitable[int]], tenant: str) -> float:
    """Run ``worker`` on every connection until the phase ends; returns units per second."""
    connections = [await ctx.connect(tenant) for _ in range(ctx.connections)]
    deadline = time.perf_counter() + ctx.duration
    started = time.perf_counter()

    async def loop(conn: Connection) -> int:
        done = 0
        while time.perf_counter() < deadline:
            done += await worker(conn)
        return done

    counts = await asyncio.gather(*(loop(conn) for conn in connections))
    elapsed = time.perf_counter() - started
    for conn in connections:
        await conn.close()
    return sum(counts) / elapsed


# The floor ----------------------------------------------------------------------------------


async def floor(ctx: Context) -> float:
    """Bare psycopg async: concurrent single-row autocommit INSERTs into an equivalent table."""
    async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE bench_floor (id uuid PRIMARY KEY, task_id uuid NOT NULL, "
            "type text NOT NULL, body jsonb NOT NULL, created_at timestamptz NOT NULL)"
        )
    conns = [
        await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True)
        for _ in range(ctx.connections)
    ]
    deadline = time.perf_counter() + ctx.duration
    started = time.perf_counter()
    body = orjson.dumps({"percent": 50}).decode()

    async def insert(conn: psycopg.AsyncConnection) -> int:
        done = 0
        task_id = uuid.uuid4()
        while time.perf_counter() < deadline:
            await conn.execute(
                "INSERT INTO bench_floor VALUES (%s, %s, %s, %s::jsonb, now())",
                (uuid.uuid4(), task_id, "task.progress", body),
            )
            done += 1
        return done

    counts = await asyncio.gather(*(insert(conn) for conn in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return sum(counts) / elapsed


# 1. Receipt ingest ---------------------------------------------------------------------------

INGEST_LUA = """
local bodies = {%s}
local index = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 7)
end
function init(args)
  index = offset or 0
end
function request()
  index = index %% #bodies + 1
  return wrk.format(nil, "/v1/receipts", nil, bodies[index])
end
"""


async def leased_tasks(ctx: Context, tenant: str, count: int, kind: str) -> list[dict]:
    conn = await ctx.connect(tenant)
    for start in range(0, count, 1000):
        tasks = [{"type": kind} for _ in range(min(1000, count - start))]
        await conn.json("POST", "/v1/tasks/batch", {"tasks": tasks}, expect=201)
    grants: list[dict] = []
    while len(grants) < count:
        got = await conn.json(
            "POST",
            "/v1/leases",
            {"worker": "worker:bench", "types": [kind], "max_tasks": 100, "ttl_seconds": 3600},
        )
        if not got:
            break
        grants += got
    await conn.close()
    return grants


async def ingest(ctx: Context) -> tuple[float, int]:
    grants = await leased_tasks(ctx, "ingest", ctx.size(256, 32), "ingest")
    bodies = [
        orjson.dumps(
            {
                "type": "task.progress",
                "task_id": g["task"]["task_id"],
                "lease_id": g["lease_id"],
                "body": {"percent": 50},
            }
        ).decode()
        for g in grants
    ]
    script = ctx.workdir / "ingest.lua"
    script.write_text(INGEST_LUA % (",".join(f"[[{b}]]" for b in bodies), ctx.keys["ingest"]))
    result = await asyncio.to_thread(
        subprocess.run,
        [
            ctx.wrk, "-t2", f"-c{ctx.connections}", f"-d{max(1, round(ctx.duration))}s",
            "-s", str(script), f"http://127.0.0.1:{ctx.port}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
    return rate, int(errors.group(1)) if errors else 0


# 2. Life cycles ------------------------------------------------------------------------------


async def one_cycle(conn: Connection) -> int:
    task = await conn.json("POST", "/v1/tasks", {"type": "cycle"}, expect=201)
    grants = await conn.json(
        "POST", "/v1/leases", {"worker": "worker:bench", "types": ["cycle"], "ttl_seconds": 600}
    )
    done = 0
    for grant in grants:
        await conn.json(
            "POST",
            "/v1/receipts",
            {
                "type": "task.success",
                "task_id": grant["task"]["task_id"],
                "lease_id": grant["lease_id"],
                "parent_receipt_ids": [grant["task"]["obligation_receipt_id"]],
                "artifacts": ARTIFACT,
            },
            expect=201,
        )
        done += 1
    del task
    return done


async def batched_cycles(conn: Connection) -> int:
    await conn.json(
        "POST", "/v1/tasks/batch", {"tasks": [{"type": "batched"}] * 100}, expect=201
    )
    grants = await conn.json(
        "POST",
        "/v1/leases",
        {"worker": "worker:bench", "types": ["batched"], "max_tasks": 100, "ttl_seconds": 600},
    )
    if not grants:
        return 0
    receipts = [
        {
            "type": "task.success",
            "task_id": g["task"]["task_id"],
            "lease_id": g["lease_id"],
            "parent_receipt_ids": [g["task"]["obligation_receipt_id"]],
            "artifacts": ARTIFACT,
        }
        for g in grants
    ]
    await conn.json("POST", "/v1/receipts/batch", {"receipts": receipts}, expect=201)
    return len(grants)


async def life_cycles(ctx: Context, batched: bool) -> float:
    if batched:
        return await for_duration(ctx, batched_cycles, "batched")
    return await for_duration(ctx, one_cycle, "cycles")


# 3. Bootstrap --------------------------------------------------------------------------------

SEED_SQL = """
WITH t AS (
    SELECT gen_random_uuid() AS task_id, gen_random_uuid() AS obligation, gen_random_uuid() AS closer,
           now() - random() * interval '1 day' AS at
    FROM generate_series(1, %(count)s)
), tasks_in AS (
    INSERT INTO tasks (tenant, task_id, type, payload, principal, created_by, priority,
                       request_hash, state, obligation_receipt_id, obligation_open,
                       obligation_closed_by, created_at, updated_at)
    SELECT 'boot', task_id, 'seed', '{}', 'service:bench', 'service:bench', 0, 'seed',
           CASE WHEN %(open)s THEN 'PENDING' ELSE 'FAILED' END, obligation, %(open)s,
           CASE WHEN %(open)s THEN NULL ELSE closer END, at, at
    FROM t
), obligations_in AS (
    INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                          parent_receipt_ids, body, artifacts, content_hash, created_at)
    SELECT 'boot', obligation, 'task.assigned', task_id, 'service:bench', 'service:bench',
           '{}', '{"task_type": "seed", "priority": 0}', '[]', 'seed', at
    FROM t
)
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                      parent_receipt_ids, body, artifacts, content_hash, created_at)
SELECT 'boot', closer, 'task.failure', task_id, 'service:bench', 'service:bench',
       ARRAY[obligation], '{"error": "seeded"}', '[]', 'seed', at + interval '1 second'
FROM t WHERE NOT %(open)s
"""


async def seed(ctx: Context, count: int, open_: bool) -> None:
    async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as conn:
        for start in range(0, count, 50_000):
            await conn.execute(SEED_SQL, {"count": min(50_000, count - start), "open": open_})
        await conn.execute("ANALYZE tasks")
        await conn.execute("ANALYZE receipts")


def rss_mib(pid: int) -> float:
    """Resident memory of the server process and its children (uvicorn workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    total = 0
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def timed_dump(ctx: Context, expect_count: int, repeats: int) -> tuple[float, float]:
    """Median seconds of a full GET /v1/obligations/open, and the peak RSS growth meanwhile."""
    conn = await ctx.connect("boot")
    times, peaks = [], []
    for _ in range(repeats):
        baseline = rss_mib(ctx.server_pid)
        peak = baseline
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_mib(ctx.server_pid))
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        status, body = await conn.request("GET", "/v1/obligations/open")
        times.append(time.perf_counter() - started)
        sampling = False
        await sampler
        assert status == 200, body[:200]
        count = len(orjson.loads(body))
        assert count == expect_count, f"expected {expect_count} open obligations, got {count}"
        peaks.append(peak - baseline)
    await conn.close()
    ctx.extra["baseline_rss"] = rss_mib(ctx.server_pid)
    return statistics.median(times), max(peaks)


async def bootstrap(ctx: Context) -> dict[str, Any]:
    open_count = ctx.size(10_000, 200)
    small_closed = open_count // 2  # two receipts each: the ledger is 2 x open_count
    large_ledger = ctx.size(500_000, 4_000)
    big_open = ctx.size(100_000, 1_000)
    repeats = 3 if ctx.quick else 5
    await seed(ctx, open_count, True)
    await seed(ctx, small_closed, False)
    small_seconds, small_rss = await timed_dump(ctx, open_count, repeats)
    await seed(ctx, (large_ledger - 2 * open_count) // 2, False)
    large_seconds, _ = await timed_dump(ctx, open_count, repeats)
    await seed(ctx, big_open - open_count, True)
    _, big_rss = await timed_dump(ctx, big_open, 1)
    return {
        "open": open_count,
        "small_ledger": open_count + 2 * small_closed,
        "large_ledger": large_ledger,
        "small_seconds": small_seconds,
        "large_seconds": large_seconds,
        "big_open": big_open,
        "small_rss_growth_mib": small_rss,
        "big_rss_growth_mib": big_rss,
        "baseline_rss_mib": ctx.extra["baseline_rss"],
    }


# 4. Contended claims -------------------------------------------------------------------------


async def contended_claims(ctx: Context) -> dict[str, Any]:
    total = ctx.size(10_000, 200)
    conn = await ctx.connect("claims")
    for start in range(0, total, 1000):
        tasks = [{"type": "contended"} for _ in range(min(1000, total - start))]
        await conn.json("POST", "/v1/tasks/batch", {"tasks": tasks}, expect=201)
    await conn.close()
    claimers = [await ctx.connect("claims") for _ in range(ctx.connections)]

    async def claim_until_empty(conn: Connection, worker: int) -> int:
        got = 0
        while True:
            grants = await conn.json(
                "POST", "/v1/leases", {"worker": f"worker:c{worker}", "ttl_seconds": 3600}
            )
            if not grants:
                return got
            got += len(grants)

    started = time.perf_counter()
    counts = await asyncio.gather(*(claim_until_empty(c, i) for i, c in enumerate(claimers)))
    elapsed = time.perf_counter() - started
    for conn in claimers:
        await conn.close()
    async with await psycopg.AsyncConnection.connect(ctx.database_url) as db:
        cursor = await db.execute(
            "SELECT count(*) FROM (SELECT task_id FROM leases WHERE tenant = 'claims' "
            "GROUP BY task_id HAVING count(*) > 1) doubled"
        )
        (doubled,) = await cursor.fetchone()
    assert sum(counts) == total, f"{sum(counts)} claims for {total} tasks"
    return {"tasks": total, "rate": total / elapsed, "double_leases": doubled}
