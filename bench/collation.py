"""What the text keys' collation costs PostgreSQL per written row (see migration 0006).

    .venv/bin/python bench/collation.py              # CPU per row under each collation
    .venv/bin/python bench/collation.py --rows 20000 # fewer rows per round (a smoke run)

Rows shaped like the ledger's receipts, with its four B-tree indexes (each led by the tenant),
are inserted 100 per statement as the ledger writes them, into a fresh table per collation of
the key columns: the database's default, "C" (what migration 0006 sets), and ICU en-US (what
the official images and most installations default to, when this server has ICU). The
figure is the PostgreSQL backend's own CPU per row, read from /proc/<pid>/schedstat (the
server must run on this machine), as the median of alternating rounds, and its ratio to "C".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import orjson
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncgate.ids import new_id  # noqa: E402

TABLE = """
CREATE TABLE bench_receipts (
    tenant     text {collate} NOT NULL,
    receipt_id uuid NOT NULL,
    type       text {collate} NOT NULL,
    task_id    uuid NOT NULL,
    body       jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, receipt_id)
);
CREATE INDEX ON bench_receipts (tenant, created_at, receipt_id);
CREATE INDEX ON bench_receipts (tenant, task_id, created_at, receipt_id);
CREATE INDEX ON bench_receipts (tenant, type, created_at, receipt_id);
"""
# As the ledger's statements read their rows: one JSON recordset, default-collation columns.
INSERT = """
INSERT INTO bench_receipts
SELECT tenant, receipt_id, type, task_id, body, now()
FROM json_to_recordset(%s::json) AS r(tenant text, receipt_id uuid, type text, task_id uuid,
                                     body jsonb)
"""
TYPES = ["task.progress", "task.success", "task.failure", "task.assigned"]


def backend_cpu_seconds(pid: int) -> float:
    """The backend's CPU time so far, from schedstat's nanoseconds (the clock ticks of
    /proc/<pid>/stat are 10 ms: too coarse for a short round)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except FileNotFoundError:
        raise SystemExit(
            "bench/collation.py: the PostgreSQL backend is not on this machine; "
            "run it beside the server"
        ) from None


def statements(rows: int) -> list[str]:
    """The round's statements, made before timing so the client's work is not in between."""
    tenants = [f"tenant-{n:02d}.example" for n in range(8)]
    made = []
    for start in range(0, rows, 100):
        task_id = new_id()
        batch = [
            {
                "tenant": tenants[(start // 100) % len(tenants)],
                "receipt_id": new_id(),
                "type": TYPES[i % len(TYPES)],
                "task_id": task_id if i % 3 else new_id(),
                "body": {"step": i},
            }
            for i in range(min(100, rows - start))
        ]
        made.append(orjson.dumps(batch).decode())
    return made


def cpu_per_row(conn: psycopg.Connection, pid: int, collate: str, rows: int) -> float:
    conn.execute("DROP TABLE IF EXISTS bench_receipts")
    conn.execute(TABLE.format(collate=collate))
    batches = statements(rows)
    for batch in batches[:5]:  # prepared (psycopg prepares on the fifth use), caches warm
        conn.execute(INSERT, [batch])
    before = backend_cpu_seconds(pid)
    for batch in batches[5:]:
        conn.execute(INSERT, [batch])
    used = backend_cpu_seconds(pid) - before
    conn.execute("DROP TABLE bench_receipts")
    return used / (rows - min(rows, 500)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60_000, help="rows per round and collation")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    if args.rows <= 500:
        parser.error("--rows must exceed 500 (the first 500 warm up)")
    name = f"asyncgate_collation_{os.getpid()}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + name
        with psycopg.connect(url, autocommit=True) as conn:
            pid = conn.info.backend_pid
            default = conn.execute("SHOW lc_collate").fetchone()[0]  # type: ignore[index]
            collations = {f"database default ({default})": "", '"C"': 'COLLATE "C"'}
            icu = conn.execute(
                "SELECT 1 FROM pg_collation WHERE collname = 'en-US-x-icu'"
            ).fetchone()
            if icu:
                collations["ICU en-US"] = 'COLLATE "en-US-x-icu"'
            results: dict[str, list[float]] = {label: [] for label in collations}
            for round_ in range(args.rounds):
                print(f"[collation] round {round_ + 1} of {args.rounds}", file=sys.stderr)
                for label, collate in collations.items():
                    results[label].append(cpu_per_row(conn, pid, collate, args.rows))
    finally:
        with psycopg.connect(args.pg_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    reference = statistics.median(results['"C"'])
    print(f"PostgreSQL CPU per indexed row, {args.rows:,} rows per round, median of {args.rounds}")
    for label, figures in results.items():
        median = statistics.median(figures)
        ratio = f"{median / reference:4.2f}" if reference else " n/a"
        print(f'  {label:34} {median:6.2f} us   {ratio} x "C"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
