"""The app's own CPU per request, in process: no HTTP server, no load generator, no noise.

    .venv/bin/python bench/inprocess.py                 # CPU microseconds per request
    .venv/bin/python bench/inprocess.py --profile out   # and a cProfile dump per operation

Drives the ASGI app directly, one request at a time, against a throwaway PostgreSQL database,
and reports process CPU time (not wall time) per request for the hot operations: progress
receipts, task creation, claims, success receipts, and the batch forms. The database's own
CPU is in another process and is not counted. Use it to see what a change to the request
path costs before running the full benchmark (bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import psycopg
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scenarios import (  # noqa: E402
    postgres_cpu_seconds,
    progress_body,
    success_body,
)

from asyncgate.app import create_app  # noqa: E402
from asyncgate.settings import Settings, hash_key  # noqa: E402

# PostgreSQL's CPU per call of each operation, beside the app's own.
DATABASE_CPU: dict[str, float] = {}


class Driver:
    """Calls the ASGI app as a server would, with the least work of its own."""

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.headers = [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
        ]

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = b"" if body is None else orjson.dumps(body)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": self.headers + [(b"content-length", str(len(payload)).encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, orjson.loads(b"".join(chunks)) if chunks else None


async def lifespan(app: Any, phase: str) -> None:
    messages = [{"type": f"lifespan.{phase}"}]
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await done.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"].endswith(("complete", "failed")):
            done.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    await done.wait()
    if phase == "shutdown":
        await task
    else:
        task.cancel()


async def measure(
    name: str, count: int, step: Callable[[int], Awaitable[None]], profile_dir: Path | None
) -> float:
    """CPU microseconds per call of ``step``, over ``count`` sequential calls."""
    warm = min(50, count)
    for i in range(warm):  # warm caches and prepared statements
        await step(i)
    profiler = cProfile.Profile(time.process_time) if profile_dir else None
    database_started = postgres_cpu_seconds()
    started = time.process_time()
    if profiler:
        profiler.enable()
    for i in range(warm, warm + count):
        await step(i)
    if profiler:
        profiler.disable()
    per_call = (time.process_time() - started) / count * 1e6
    DATABASE_CPU[name] = (postgres_cpu_seconds() - database_started) / count * 1e6
    if profiler and profile_dir:
        profiler.dump_stats(profile_dir / f"{name}.prof")
    return per_call


async def run(
    database_url: str, count: int, profile_dir: Path | None, concurrency: int = 0
) -> list[tuple[str, str, float]]:
    key = secrets.token_urlsafe(24)
    keys_file = Path(tempfile.mkdtemp(prefix="asyncgate-inproc-")) / "keys"
    keys_file.write_text(f"{hash_key(key)} bench service:bench\n")
    settings = Settings.from_env(
        {
            "ASYNCGATE_ENV": "production",
            "ASYNCGATE_DATABASE_URL": database_url,
            "ASYNCGATE_API_KEYS_FILE": str(keys_file),
            "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
            "ASYNCGATE_LOG_LEVEL": "WARNING",
        }
    )
    app = create_app(settings)
    await lifespan(app, "startup")
    client = Driver(app, key)
    results: list[tuple[str, str, float]] = []

    async def expect(status: int, method: str, path: str, body: Any = None) -> Any:
        got, data = await client.request(method, path, body)
        if got != status:
            raise SystemExit(f"{method} {path}: {got} {data}")
        return data

    await expect(201, "POST", "/v1/tasks/batch", {"tasks": [{"type": "p"}] * 64})
    grants = await expect(200, "POST", "/v1/leases", {"worker": "w:1", "max_tasks": 64})

    async def progress(i: int) -> None:
        await expect(201, "POST", "/v1/receipts", progress_body(grants[i % len(grants)]))

    results.append(
        ("progress receipt", "progress", await measure("progress", count, progress, profile_dir))
    )

    async def create(i: int) -> None:
        await expect(201, "POST", "/v1/tasks", {"type": "cycle"})

    results.append(("create task", "create", await measure("create", count, create, profile_dir)))
    claimed: list[dict[str, Any]] = []

    async def claim(i: int) -> None:
        claimed.extend(
            await expect(200, "POST", "/v1/leases", {"worker": "w:1", "types": ["cycle"]})
        )

    results.append(("claim one task", "claim", await measure("claim", count, claim, profile_dir)))

    async def success(i: int) -> None:
        await expect(201, "POST", "/v1/receipts", success_body(claimed[i]))

    results.append(
        ("success receipt", "success", await measure("success", count, success, profile_dir))
    )

    if concurrency:
        results.extend(await joined(expect, concurrency, count))

    batches = max(4, count // 100)

    # The three batch requests of a life cycle measured apart, each over the same batches.
    claimed_batches: list[list[dict[str, Any]]] = []

    async def create_batch(i: int) -> None:
        await expect(201, "POST", "/v1/tasks/batch", {"tasks": [{"type": "batched"}] * 100})

    async def claim_batch(i: int) -> None:
        claimed_batches.append(await expect(200, "POST", "/v1/leases", {
            "worker": "w:1", "types": ["batched"], "max_tasks": 100,
        }))  # fmt: skip

    async def success_batch(i: int) -> None:
        await expect(201, "POST", "/v1/receipts/batch", {
            "receipts": [success_body(grant) for grant in claimed_batches[i]]
        })  # fmt: skip

    steps = (
        ("batched create (per task)", "batched_create", create_batch),
        ("batched claim (per task)", "batched_claim", claim_batch),
        ("batched success (per task)", "batched_success", success_batch),
    )
    total = 0.0
    for label, name, step in steps:
        per_task = await measure(name, batches, step, profile_dir) / 100
        DATABASE_CPU[name] /= 100
        results.append((label, name, per_task))
        total += per_task
    DATABASE_CPU["batched"] = sum(DATABASE_CPU[name] for _, name, _ in steps)
    results.append(("batched life cycle (per task)", "batched", total))
    await lifespan(app, "shutdown")
    return results


async def joined(
    expect: Callable[..., Awaitable[Any]], concurrency: int, count: int
) -> list[tuple[str, str, float]]:
    """Receipts and unbatched life cycles from ``concurrency`` clients at once, so requests
    join as under load (see asyncgate/coalesce.py): CPU per receipt and per life cycle, and
    their ratio, the in-process counterpart of bench/run.py's goal 2 without HTTP."""
    await expect(201, "POST", "/v1/tasks/batch", {"tasks": [{"type": "jp"}] * concurrency})
    grants = await expect(200, "POST", "/v1/leases", {
        "worker": "w:j", "types": ["jp"], "max_tasks": concurrency,
    })  # fmt: skip
    per_client = max(1, count // concurrency)

    async def receipts(grant: dict[str, Any], n: int) -> None:
        for _ in range(n):
            await expect(201, "POST", "/v1/receipts", progress_body(grant))

    async def cycles(n: int) -> None:
        for _ in range(n):
            await expect(201, "POST", "/v1/tasks", {"type": "jc"})
            granted: list[dict[str, Any]] = []
            while not granted:  # concurrent claims may hold every task for a moment
                granted = await expect(200, "POST", "/v1/leases", {
                    "worker": "w:j", "types": ["jc"], "ttl_seconds": 600,
                })  # fmt: skip
            await expect(201, "POST", "/v1/receipts", success_body(granted[0]))

    async def timed(name: str, work: Callable[[int], list[Awaitable[None]]]) -> float:
        await asyncio.gather(*work(max(1, per_client // 10)))  # warm
        database_started = postgres_cpu_seconds()
        started = time.process_time()
        await asyncio.gather(*work(per_client))
        units = per_client * concurrency
        DATABASE_CPU[name] = (postgres_cpu_seconds() - database_started) / units * 1e6
        return (time.process_time() - started) / units * 1e6

    receipt = await timed("joined_progress", lambda n: [receipts(g, n) for g in grants])
    cycle = await timed("joined_cycle", lambda n: [cycles(n) for _ in range(concurrency)])
    # PostgreSQL's CPU is read in clock ticks: a short run may see none.
    database_receipt = DATABASE_CPU["joined_progress"]
    DATABASE_CPU["joined_ratio"] = (
        DATABASE_CPU["joined_cycle"] / database_receipt if database_receipt else float("nan")
    )
    return [
        (f"joined progress ({concurrency} at once)", "joined_progress", receipt),
        (f"joined life cycle ({concurrency} at once)", "joined_cycle", cycle),
        ("life cycle / progress (x)", "joined_ratio", cycle / receipt),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="requests per operation")
    parser.add_argument("--profile", metavar="DIR", help="write a cProfile dump per operation")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        metavar="N",
        help="also time receipts and life cycles from N clients at once, joined as under load",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    name = f"asyncgate_inproc_{os.getpid()}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + name
        results = uvloop.run(run(url, args.count, profile_dir, args.concurrency))
    finally:
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"{'CPU per request':32} {'app':>8}  {'PostgreSQL':>10}")
    for label, name, micros in results:
        if name == "joined_ratio":
            print(f"{label:32} {micros:6.2f} x   {DATABASE_CPU[name]:7.2f} x")
        else:
            print(f"{label:32} {micros:6,.0f} us  {DATABASE_CPU[name]:7,.0f} us")
    if profile_dir:
        print(f"profiles: {profile_dir}/<operation>.prof; read with python -m pstats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
