"""What the ``redis`` rate-limit backend costs per request, as a ratio against ``memory``.

Two measures in one run, each sequential (latency, not throughput), the backends
alternating in rounds, each reported as its fastest and its median round:
  * ``hit()``: the backend call alone, beside a bare Redis PING (one round trip's floor);
  * ``GET /v1/tasks``: a full authenticated request through the ASGI app (SQLite), with
    limiting off, on memory, and on Redis.

    .venv/bin/python bench/ratelimit_cost.py [--calls 5000] [--requests 1000] [--redis-url URL]

Not a test: timings depend on the machine. Needs a reachable Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

import falcon.testing
import redis.asyncio as redis
from asyncgate_memory import MemoryBackend
from asyncgate_redis import RedisBackend

from asyncgate.app import create_app
from asyncgate.ratelimit import RateLimitBackend
from asyncgate.settings import Settings

WARMUP = 50
# Backends alternate round by round so drift hits all alike; the fastest round is the
# cost least disturbed by other load, the median shows the typical case.
ROUNDS = 20
Row = tuple[str, str, int, float, float]  # measure, backend, calls, best and median s/call
Call = Callable[[], Awaitable[object]]


async def interleaved(measure: str, calls: int, subjects: dict[str, Call]) -> list[Row]:
    for call in subjects.values():
        for _ in range(WARMUP):
            await call()
    rounds: dict[str, list[float]] = {name: [] for name in subjects}
    per_round = max(1, calls // ROUNDS)
    for _ in range(ROUNDS):
        for name, call in subjects.items():
            started = time.perf_counter()
            for _ in range(per_round):
                await call()
            rounds[name].append((time.perf_counter() - started) / per_round)
    return [
        (measure, name, per_round * ROUNDS, min(times), statistics.median(times))
        for name, times in rounds.items()
    ]


async def bench_hits(calls: int, redis_url: str) -> list[Row]:
    prefix = f"asyncgate:rlbench:{uuid.uuid4().hex}:"
    shared = RedisBackend(redis_url, 1.0, prefix=prefix)
    backends: list[RateLimitBackend] = [MemoryBackend(), shared]
    subjects: dict[str, Call] = {
        backend.name: partial(backend.hit, "key:bench", 10**9, 60) for backend in backends
    }
    # A bare PING is the floor for any one-round-trip Redis backend.
    client = redis.Redis.from_url(redis_url)
    subjects["PING"] = client.ping
    rows = await interleaved("hit()", calls, subjects)
    for backend in backends:
        await backend.close()
    await client.delete(prefix + "key:bench")
    await client.aclose()
    return rows


async def bench_app(requests: int, redis_url: str, directory: str) -> list[Row]:
    key = secrets.token_urlsafe(24)
    base = {
        "ASYNCGATE_ENV": "test",
        "ASYNCGATE_API_KEY": key,
        "ASYNCGATE_DATABASE_URL": f"sqlite:///{directory}/bench.db",
        "ASYNCGATE_RATE_LIMIT_DEFAULT_CALLS": str(10**9),
        "ASYNCGATE_RATE_LIMIT_REDIS_URL": redis_url,
    }
    headers = {"Authorization": f"Bearer {key}"}

    async def request(conductor: falcon.testing.ASGIConductor) -> None:
        result = await conductor.simulate_get("/v1/tasks", params={"limit": 1}, headers=headers)
        assert result.status_code == 200, result.text

    async with contextlib.AsyncExitStack() as stack:
        subjects: dict[str, Call] = {}
        for backend in ("off", "memory", "redis"):
            env = {
                **base,
                "ASYNCGATE_RATE_LIMIT_ACTIVE": "false" if backend == "off" else "true",
                "ASYNCGATE_RATE_LIMIT_BACKEND": "memory" if backend == "off" else backend,
            }
            app = create_app(Settings.from_env(env))
            conductor = await stack.enter_async_context(falcon.testing.ASGIConductor(app))
            subjects[backend] = partial(request, conductor)
        return await interleaved("GET /v1/tasks (app)", requests, subjects)


def print_table(rows: list[Row]) -> None:
    memory = {row[0]: row[3:] for row in rows if row[1] == "memory"}
    print(
        f"{'measure':<22}{'backend':<9}{'calls':>7}{'best µs':>9}{'median µs':>11}"
        f"{'best vs memory':>16}{'median vs memory':>18}"
    )
    for measure, backend, calls, best, median in rows:
        best_ratio, median_ratio = best / memory[measure][0], median / memory[measure][1]
        print(
            f"{measure:<22}{backend:<9}{calls:>7}{best * 1e6:>9.1f}{median * 1e6:>11.1f}"
            f"{best_ratio:>15.2f}x{median_ratio:>17.2f}x"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="hit() calls per backend")
    parser.add_argument("--requests", type=int, default=1000, help="app requests per backend")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("ASYNCGATE_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        rows = await bench_hits(args.calls, args.redis_url)
        rows += await bench_app(args.requests, args.redis_url, directory)
    print_table(rows)


if __name__ == "__main__":
    asyncio.run(main())
