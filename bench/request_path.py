"""The request path's own CPU, with the ledger stubbed out: HTTP plumbing, middleware, body
parsing, validation and rendering, and nothing of the database or the SQL around it.

    .venv/bin/python bench/request_path.py                 # CPU microseconds per request
    .venv/bin/python bench/request_path.py --profile out   # and a cProfile dump per operation

Each figure is the best of several rounds, so it moves by a few tenths of a microsecond: fine
enough to see a change of 1-2 us that bench/inprocess.py, whose SQL costs hundreds, cannot.
No database is needed (the app is built for one but never opened).
"""

from __future__ import annotations

import argparse
import cProfile
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from inprocess import Driver  # noqa: E402
from scenarios import ARTIFACT  # noqa: E402

import asyncgate.app  # noqa: E402
from asyncgate.ledger import Ledger  # noqa: E402
from asyncgate.receipts import ReceiptResult  # noqa: E402
from asyncgate.settings import Settings, hash_key  # noqa: E402

RECEIPT = {
    "receipt_id": str(uuid.uuid4()),
    "task_id": str(uuid.uuid4()),
    "type": "task.progress",
    "body": {},
    "created_at": "2026-01-01T00:00:00Z",
}
TASK = {"task_id": str(uuid.uuid4()), "type": "cycle", "state": "PENDING", "payload": {}}


class StubLedger(Ledger):
    """Answers at once with fixed rows: what is left to measure is the request path."""

    async def write_receipts(self, identity: Any, specs: list, batch: bool) -> list:  # type: ignore[override]
        return [ReceiptResult(dict(RECEIPT), []) for _ in specs]

    async def create_tasks(self, identity: Any, specs: list, batch: bool) -> list:  # type: ignore[override]
        return [(dict(TASK), True) for _ in specs]

    async def claim(self, identity: Any, **claim: Any) -> list:  # type: ignore[override]
        return [{"lease_id": RECEIPT["receipt_id"], "task": dict(TASK)}]


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    return [
        ("progress", "/v1/receipts", {
            "type": "task.progress", "task_id": ids[0], "lease_id": ids[1],
            "body": {"percent": 50},
        }),
        ("create", "/v1/tasks", {"type": "cycle"}),
        ("claim", "/v1/leases", {"worker": "w:1", "types": ["cycle"]}),
        ("success", "/v1/receipts", {
            "type": "task.success", "task_id": ids[0], "lease_id": ids[1],
            "parent_receipt_ids": [ids[2]], "artifacts": ARTIFACT,
        }),
    ]  # fmt: skip


async def run(count: int, rounds: int, profile_dir: Path | None) -> list[tuple[str, float]]:
    key = secrets.token_urlsafe(24)
    keys_file = Path(tempfile.mkdtemp(prefix="asyncgate-path-")) / "keys"
    keys_file.write_text(f"{hash_key(key)} bench service:bench\n")
    settings = Settings.from_env(
        {
            "ASYNCGATE_ENV": "production",
            "ASYNCGATE_DATABASE_URL": "postgresql://bench@127.0.0.1:1/unused",
            "ASYNCGATE_API_KEYS_FILE": str(keys_file),
            "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
            "ASYNCGATE_LOG_LEVEL": "WARNING",
        }
    )
    asyncgate.app.Ledger = StubLedger  # type: ignore[misc]
    client = Driver(asyncgate.app.create_app(settings), key)
    results = []
    for name, path, body in operations():
        for _ in range(min(200, count)):
            status, data = await client.request("POST", path, body)
            if status not in (200, 201):
                raise SystemExit(f"POST {path}: {status} {data}")
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            for _ in range(count):
                await client.request("POST", path, body)
            best = min(best, (time.process_time() - started) / count * 1e6)
        results.append((name, best))
        if profile_dir:
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            for _ in range(count):
                await client.request("POST", path, body)
            profiler.disable()
            profiler.dump_stats(profile_dir / f"{name}.prof")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("--profile", metavar="DIR", help="write a cProfile dump per operation")
    args = parser.parse_args()
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    for name, micros in uvloop.run(run(args.count, args.rounds, profile_dir)):
        print(f"{name:10} {micros:6.1f} us CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
