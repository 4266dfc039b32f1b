"""SQLite, the embedded default: what joining concurrent writes (asyncgate/coalesce.py) gives.

    .venv/bin/python bench/sqlite_joined.py              # receipts/s, joined vs one per statement
    .venv/bin/python bench/sqlite_joined.py --count 300  # a quick run

Drives the ASGI app in process (no HTTP server, no other service) with 32 concurrent clients
each writing task.progress receipts under its own lease, on a throwaway SQLite file, twice
side by side: as the server runs (joined: one transaction, and so one fsync, per cohort) and
with joining turned off (every receipt its own transaction). Prints both rates and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import falcon.testing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncgate import coalesce  # noqa: E402
from asyncgate.app import create_app  # noqa: E402
from asyncgate.settings import Settings, hash_key  # noqa: E402

CLIENTS = 32


async def receipts_per_second(count: int, joined: bool) -> float:
    # Turning joining off: every statement carries one request.
    defaults = coalesce.Coalescer.__init__.__defaults__
    if not joined:
        coalesce.Coalescer.__init__.__defaults__ = (1, 1)
    try:
        with tempfile.TemporaryDirectory(prefix="asyncgate-sqlite-bench-") as directory:
            key = secrets.token_urlsafe(24)
            keys = Path(directory) / "keys"
            keys.write_text(f"{hash_key(key)} bench service:bench\n")
            os.environ.update(
                {
                    "ASYNCGATE_DATABASE_URL": f"sqlite:///{directory}/asyncgate.db",
                    "ASYNCGATE_API_KEYS_FILE": str(keys),
                    "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
                    "ASYNCGATE_LOG_LEVEL": "WARNING",
                }
            )
            app = create_app(Settings.from_env())
            return await drive(app, key, count)
    finally:
        coalesce.Coalescer.__init__.__defaults__ = defaults


async def drive(app: object, key: str, count: int) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    async with falcon.testing.ASGIConductor(app) as client:
        tasks = {"tasks": [{"type": "bench"}] * CLIENTS}
        await client.simulate_post("/v1/tasks/batch", json=tasks, headers=headers)
        claim = {"worker": "worker:bench", "types": ["bench"], "max_tasks": CLIENTS}
        grants = (await client.simulate_post("/v1/leases", json=claim, headers=headers)).json
        each = max(1, count // CLIENTS)

        async def report(grant: dict) -> None:
            body = {
                "type": "task.progress",
                "task_id": grant["task"]["task_id"],
                "lease_id": grant["lease_id"],
                "body": {"percent": 50},
            }
            for _ in range(each):
                answer = await client.simulate_post("/v1/receipts", json=body, headers=headers)
                assert answer.status_code == 201, answer.text

        started = time.perf_counter()
        await asyncio.gather(*(report(grant) for grant in grants))
        return each * len(grants) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="receipts per measurement")
    args = parser.parse_args()
    joined = asyncio.run(receipts_per_second(args.count, joined=True))
    alone = asyncio.run(receipts_per_second(args.count, joined=False))
    print(f"SQLite, {CLIENTS} concurrent clients, {args.count:,} task.progress receipts each way")
    print(f"joined (as served)       {joined:8,.0f} receipts/s")
    print(f"one statement each       {alone:8,.0f} receipts/s")
    print(f"ratio                    {joined / alone:8.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
