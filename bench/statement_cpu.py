"""PostgreSQL's CPU per row of a hot statement: this tree's against other revisions'.

    .venv/bin/python bench/statement_cpu.py --against b75c2bc --against HEAD
    .venv/bin/python bench/statement_cpu.py --statement claim_at_once --against HEAD

Each round readies 100 rows through the ledger and runs one variant's statement on them, on
one connection, reading that connection's backend CPU from /proc/<pid>/schedstat
(nanoseconds) around the statement and its commit:
- settle_under_lease: 100 tasks created and claimed, then settled (a success receipt each,
  naming its task's obligation, as a worker reports a batch);
- claim_at_once: 100 tasks created, then claimed in one statement (one claim of 100);
- insert_tasks: 100 new tasks with their obligations, in one statement (a batch create).
The variants take turns, round after round, so a machine that slows down slows them alike;
the first rounds are warm-up. Needs PostgreSQL on 127.0.0.1:5432, run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Json, set_json_dumps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "bench"))

from asyncgate_postgres import QUERIES, PostgresDialect, conninfo_from_url, to_db  # noqa: E402
from scenarios import success_body  # noqa: E402

from asyncgate import receipts  # noqa: E402
from asyncgate.ids import fingerprint, new_id, utcnow  # noqa: E402
from asyncgate.ledger import Ledger  # noqa: E402
from asyncgate.metrics import Metrics  # noqa: E402
from asyncgate.settings import Identity, Settings  # noqa: E402
from asyncgate.storage import load_queries  # noqa: E402

BATCH = 100
# psycopg prepares a statement on its fifth call, and PostgreSQL plans each of its first five
# executions anew: only rounds after those measure the steady state.
WARM_UP_ROUNDS = 12


def statement_at(revision: str, statement: str) -> str:
    """A statement as it stood at a git revision."""
    text = subprocess.run(
        ["git", "show", f"{revision}:plugins/asyncgate_postgres/queries.sql"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "queries.sql"
        path.write_text(text)
        return load_queries(path)[statement]


def backend_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def create_batch(ledger: Ledger, identity: Identity) -> None:
    task = {"type": "bench", "payload": {}, "priority": 0}
    await ledger.create_tasks(identity, [task] * BATCH, batch=True)


async def settle_params(ledger: Ledger, identity: Identity) -> dict[str, Any]:
    await create_batch(ledger, identity)
    grants = await ledger.claim(identity, "worker:bench", ["bench"], BATCH, 600, 0)
    rows = [receipts.settle_row(identity, success(grant)) for grant in grants]
    return {"rows": Json(rows), **to_db({"now": utcnow()})}


async def claim_params(ledger: Ledger, identity: Identity) -> dict[str, Any]:
    await create_batch(ledger, identity)
    now = utcnow()
    slots = [
        {"slot": n + 1, "lease_id": new_id(), "worker": "worker:bench",
         "expires_at": now + timedelta(seconds=600)}
        for n in range(BATCH)
    ]  # fmt: skip
    return {
        "rows": Json(slots),
        **to_db({"tenant": identity.tenant, "types": ["bench"], "limit": BATCH, "now": now}),
    }


async def insert_params(ledger: Ledger, identity: Identity) -> dict[str, Any]:
    now = utcnow()
    content = {"type": "bench", "payload": {}, "principal": identity.principal, "priority": 0}
    rows = [
        {**content, "tenant": identity.tenant, "task_id": new_id(),
         "created_by": identity.principal, "idempotency_key": None,
         "request_hash": fingerprint(content), "obligation_receipt_id": new_id(),
         "created_at": now}
        for _ in range(BATCH)
    ]  # fmt: skip
    return {"rows": Json(rows)}


# How each statement's rows are readied (its parameters for one round of BATCH rows), and how
# many rows it answers.
STATEMENTS: dict[str, tuple[Callable[[Ledger, Identity], Awaitable[dict[str, Any]]], int]] = {
    "settle_under_lease": (settle_params, BATCH),
    "claim_at_once": (claim_params, BATCH),
    "insert_tasks": (insert_params, 1),  # one wake-up hint for the tenant
}


async def measure(
    admin_url: str, statement: str, variants: list[tuple[str, str]], rounds: int
) -> None:
    name = f"asyncgate_statement_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    dialect = PostgresDialect(conninfo_from_url(url), 1, 4)
    try:
        await dialect.open()
        await dialect.migrate()

        async def emit(anomalies: list[dict[str, Any]], tenant: str) -> None:
            return None

        ledger = Ledger(dialect, Settings(), Metrics(), emit)
        identity = Identity("bench", "service:bench")
        per_row: dict[str, list[float]] = {label: [] for label, _ in variants}
        readier, answers = STATEMENTS[statement]
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            set_json_dumps(orjson.dumps, conn)
            pid = conn.info.backend_pid
            for round_ in range(rounds):
                turn = round_ % len(variants)
                for label, sql in variants[turn:] + variants[:turn]:
                    params = await readier(ledger, identity)
                    before = backend_cpu_ns(pid)
                    cursor = await conn.execute(sql, params)
                    written = await cursor.fetchall()
                    spent = backend_cpu_ns(pid) - before
                    assert len(written) == answers, f"{label}: {len(written)} rows of {answers}"
                    if round_ >= WARM_UP_ROUNDS:
                        per_row[label].append(spent / BATCH / 1000)
                print(f"[statement_cpu] round {round_ + 1}/{rounds}", file=sys.stderr)
        report(f"PostgreSQL CPU per row of {statement}, {BATCH} rows per statement", per_row)
    finally:
        await dialect.close()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def success(grant: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's success receipt, with the defaults the API fills in before the ledger
    sees it (these benches call the ledger directly)."""
    return {**success_body(grant), "body": {}, "delivery_proof": None}


def report(what: str, measured: dict[str, list[float]]) -> None:
    """Each variant's median and minimum (microseconds) over the measured rounds."""
    rounds = len(next(iter(measured.values())))
    print(f"\n{what}, median of {rounds} rounds (min)")
    for label, values in measured.items():
        print(f"  {label:<24} {statistics.median(values):6.1f} us  ({min(values):.1f})")


def parse_with_rounds(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments, with the rounds and the admin database every such bench takes."""
    parser.add_argument(
        "--rounds", type=int, default=44, help=f"rounds, {WARM_UP_ROUNDS} of warm-up included"
    )
    parser.add_argument(
        "--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database to create the throwaway ones from",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds <= WARM_UP_ROUNDS:
        parser.error(f"--rounds must be more than the {WARM_UP_ROUNDS} of warm-up")
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--statement", choices=sorted(STATEMENTS), default="settle_under_lease",
        help="the statement to measure (default settle_under_lease)",
    )  # fmt: skip
    parser.add_argument(
        "--against", action="append", default=[], metavar="REV",
        help="a git revision whose statement to measure too (repeatable)",
    )  # fmt: skip
    args = parse_with_rounds(parser)
    variants = [(revision, statement_at(revision, args.statement)) for revision in args.against]
    variants.append(("this tree", QUERIES[args.statement]))
    asyncio.run(measure(args.pg_admin_url, args.statement, variants, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
