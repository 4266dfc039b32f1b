"""PostgreSQL's CPU per batched life cycle: this tree's schema against variants of it.

    .venv/bin/python bench/schema_cpu.py --variant \\
        'with tasks_by_age=CREATE INDEX tasks_by_age ON tasks (tenant, created_at, task_id)'

Each variant is a database migrated as this tree migrates, then changed by the variant's SQL
(an index added back or dropped, a storage parameter...); "this tree" is the unchanged schema.
A round runs one batched life cycle of 100 tasks on each database in turn, through the ledger
(create the batch, claim it, settle it with one success receipt each, as bench/run.py's
batched phase does), and reads the CPU its PostgreSQL backends spent from
/proc/<pid>/schedstat (nanoseconds). The databases take turns, round after round, so a machine
that slows down slows them alike; the first rounds are warm-up. The statements are this
tree's for every variant: what differs is only what the variant's SQL changed. Needs
PostgreSQL on 127.0.0.1:5432, run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "bench"))

from asyncgate_postgres import PostgresDialect, conninfo_from_url  # noqa: E402
from statement_cpu import (  # noqa: E402
    BATCH,
    WARM_UP_ROUNDS,
    backend_cpu_ns,
    create_batch,
    parse_with_rounds,
    report,
    success,
)

from asyncgate.ledger import Ledger  # noqa: E402
from asyncgate.metrics import Metrics  # noqa: E402
from asyncgate.settings import Identity, Settings  # noqa: E402

BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'"


@dataclass
class Variant:
    label: str
    database: str
    dialect: PostgresDialect
    ledger: Ledger


async def no_emitter(anomalies: list[dict[str, Any]], tenant: str) -> None:
    return None


async def life_cycles(ledger: Ledger, identity: Identity) -> None:
    """One batched life cycle of BATCH tasks: create, claim, settle."""
    await create_batch(ledger, identity)
    grants = await ledger.claim(identity, "worker:bench", ["bench"], BATCH, 600, 0)
    assert len(grants) == BATCH, f"claimed {len(grants)} of {BATCH}"
    results = await ledger.write_receipts(identity, [success(g) for g in grants], batch=True)
    assert all(result.terminated for result in results), "a success closed no obligation"


async def open_variant(admin_url: str, label: str, sql: str | None) -> Variant:
    name = f"asyncgate_schema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    # Two connections: the ledger's pipelined transactions and its autocommit statements.
    dialect = PostgresDialect(conninfo_from_url(admin_url.rsplit("/", 1)[0] + "/" + name), 2, 2)
    await dialect.open()
    await dialect.migrate()
    if sql:
        async with dialect.autocommit() as tx:
            await tx.conn.execute(sql)
    return Variant(label, name, dialect, Ledger(dialect, Settings(), Metrics(), no_emitter))


async def measure(admin_url: str, variants: list[tuple[str, str | None]], rounds: int) -> None:
    opened: list[Variant] = []
    try:
        for label, sql in variants:
            opened.append(await open_variant(admin_url, label, sql))
        identity = Identity("bench", "service:bench")
        per_cycle: dict[str, list[float]] = {variant.label: [] for variant in opened}
        with psycopg.connect(admin_url, autocommit=True) as admin:
            for round_ in range(rounds):
                turn = round_ % len(opened)
                for variant in opened[turn:] + opened[:turn]:
                    pids = [pid for (pid,) in admin.execute(BACKENDS, [variant.database])]
                    before = sum(backend_cpu_ns(pid) for pid in pids)
                    await life_cycles(variant.ledger, identity)
                    spent = sum(backend_cpu_ns(pid) for pid in pids) - before
                    if round_ >= WARM_UP_ROUNDS:
                        per_cycle[variant.label].append(spent / BATCH / 1000)
                print(f"[schema_cpu] round {round_ + 1}/{rounds}", file=sys.stderr)
        report(f"PostgreSQL CPU per batched life cycle ({BATCH} per call)", per_cycle)
    finally:
        for variant in opened:
            await variant.dialect.close()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for variant in opened:
                conn.execute(f'DROP DATABASE IF EXISTS "{variant.database}" WITH (FORCE)')


def parse_variant(text: str) -> tuple[str, str]:
    label, separator, sql = text.partition("=")
    if not separator or not label.strip() or not sql.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=SQL, got {text!r}")
    return label.strip(), sql


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: --variant 'no receipts_by_type=DROP INDEX receipts_by_type'",
    )
    parser.add_argument(
        "--variant", action="append", default=[], type=parse_variant, metavar="LABEL=SQL",
        help="a schema variant: SQL run after this tree's migrations (repeatable)",
    )  # fmt: skip
    args = parse_with_rounds(parser)
    asyncio.run(measure(args.pg_admin_url, [*args.variant, ("this tree", None)], args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
