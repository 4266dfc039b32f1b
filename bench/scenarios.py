"""The benchmark's measurements: rates and times, which bench/run.py turns into ratios."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
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
from asyncgate_postgres import PlanMode
from http_client import Connection

ARTIFACT = [{"uri": "s3://bench/result.json", "media_type": "application/json"}]


def progress_body(grant: dict[str, Any]) -> dict[str, Any]:
    """A task.progress receipt under the grant's lease."""
    return {
        "type": "task.progress",
        "task_id": grant["task"]["task_id"],
        "lease_id": grant["lease_id"],
        "body": {"percent": 50},
    }


def success_body(grant: dict[str, Any]) -> dict[str, Any]:
    """A success that closes the grant's obligation: under its lease, with an artifact."""
    return {
        "type": "task.success",
        "task_id": grant["task"]["task_id"],
        "lease_id": grant["lease_id"],
        "parent_receipt_ids": [grant["task"]["obligation_receipt_id"]],
        "artifacts": ARTIFACT,
    }


@dataclass
class Context:
    port: int
    database_url: str
    keys: dict[str, str]
    connections: int
    duration: float
    slices: int
    quick: bool
    wrk: str
    workdir: Path
    log: Callable[[str], None]
    server_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Each goal's figure (see bench/run.py GOALS), as the run measured it.
    goals: dict[str, float] = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    async def connect(self, tenant: str) -> Connection:
        return await Connection("127.0.0.1", self.port, self.keys[tenant]).open()


# The share of a for_duration slice left out of its rate, at its start.
WARM_UP_SHARE = 0.25


async def for_duration(
    ctx: Context,
    worker: Callable[[Connection], Awaitable[int]],
    tenant: str,
    seconds: float,
    usage: Usage,
) -> tuple[int, float]:
    """Run ``worker`` on every connection for ``seconds``, its cost added to ``usage``:
    (units done in the slice's steady window, the window's seconds).

    A call's units count when it returns, and the rate counts those that return after the
    slice's first quarter and before its deadline, as wrk counts requests. Every connection
    starts at once, so at first no call has returned yet; after the deadline none starts, and
    the load thins out as connections finish their last call. A continuous load has neither.
    A batched life cycle takes about a third of a second with 32 connections, and its 2 s
    slices counted from their start to their last return read 2-3 % below their steady window
    on average (20 slices; in a single slice the two differed by up to 10 % either way).
    CPU per unit takes every unit and all the CPU the slice used.
    """
    connections = [await ctx.connect(tenant) for _ in range(ctx.connections)]
    await usage.begin()
    started = time.perf_counter()
    window_opens = started + seconds * WARM_UP_SHARE
    deadline = started + seconds
    in_window = 0

    async def loop(conn: Connection) -> int:
        nonlocal in_window
        done = 0
        while time.perf_counter() < deadline:
            units = await worker(conn)
            done += units
            if window_opens <= time.perf_counter() < deadline:
                in_window += units
        return done

    total = sum(await asyncio.gather(*(loop(conn) for conn in connections)))
    elapsed = time.perf_counter() - started
    await usage.end(total)
    for conn in connections:
        await conn.close()
    if not in_window:  # a slice shorter than one call: the whole of it, fill and drain included
        return total, elapsed
    return in_window, deadline - window_opens


# The floor ----------------------------------------------------------------------------------


class Floor:
    """Bare psycopg async: concurrent single-row autocommit INSERTs into an equivalent table."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.conns: list[psycopg.AsyncConnection[Any]] = []
        self.body = orjson.dumps({"percent": 50}).decode()

    async def open(self) -> Floor:
        ctx = self.ctx
        async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as c:
            await c.execute(
                "CREATE TABLE bench_floor (id uuid PRIMARY KEY, task_id uuid NOT NULL, "
                "type text NOT NULL, body jsonb NOT NULL, created_at timestamptz NOT NULL)"
            )
        self.conns = [
            await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True)
            for _ in range(ctx.connections)
        ]
        return self

    async def run(self, seconds: float) -> tuple[int, float]:
        """One slice: (rows inserted, seconds taken)."""
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()

        async def insert(conn: psycopg.AsyncConnection[Any]) -> int:
            done = 0
            task_id = uuid.uuid4()
            while time.perf_counter() < deadline:
                await conn.execute(
                    "INSERT INTO bench_floor VALUES (%s, %s, %s, %s::jsonb, now())",
                    (uuid.uuid4(), task_id, "task.progress", self.body),
                )
                done += 1
            return done

        counts = await asyncio.gather(*(insert(conn) for conn in self.conns))
        return sum(counts), time.perf_counter() - started

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


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


class Ingest:
    """Receipt ingest: wrk posting task.progress receipts under leases, round robin."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.script = ctx.workdir / "ingest.lua"

    async def open(self) -> Ingest:
        ctx = self.ctx
        grants = await leased_tasks(ctx, "ingest", ctx.size(256, 32), "ingest")
        bodies = [orjson.dumps(progress_body(grant)).decode() for grant in grants]
        self.script.write_text(
            INGEST_LUA % (",".join(f"[[{b}]]" for b in bodies), ctx.keys["ingest"])
        )
        return self

    async def run(self, seconds: int) -> tuple[int, float, int]:
        """One slice: (requests, seconds taken, non-2xx answers)."""
        ctx = self.ctx
        result = await asyncio.to_thread(
            subprocess.run,
            [
                ctx.wrk, "-t2", f"-c{ctx.connections}", f"-d{seconds}s",
                "-s", str(self.script), f"http://127.0.0.1:{ctx.port}",
            ],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))
        errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
        total = int(re.search(r"(\d+) requests in", result.stdout).group(1))
        return total, total / rate if rate else float(seconds), int(errors[1]) if errors else 0


# 2. Life cycles ------------------------------------------------------------------------------


CYCLE_LUA = """
-- Life cycles: create a task, claim one, settle it with task.success, one request each.
-- A thread's connections share its Lua state (wrk names no connection), so each response is
-- told by its shape: a claim answers 200 with a list, a success 201 with its receipt, a create
-- 201 with the task. A connection's next request settles the oldest grant not yet settled,
-- else claims for a task created and not yet claimed, else creates one: every task created is
-- claimed once and every grant settled once, as when each connection runs its own cycle.
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer __KEY__"
completed, failures = 0, 0
local threads = {}
local grants, first, last = {}, 1, 0
local unclaimed = 0
local create_body = '{"type":"cycle"}'
local claim_body = '{"worker":"worker:bench","types":["cycle"],"ttl_seconds":600}'
local success_body = '{"type":"task.success","task_id":"%s","lease_id":"%s",' ..
  '"parent_receipt_ids":["%s"],"artifacts":[{"uri":"s3://bench/result.json",' ..
  '"media_type":"application/json"}]}'

function setup(thread)
  table.insert(threads, thread)
end

function request()
  if first <= last then
    local grant = grants[first]
    grants[first] = nil
    first = first + 1
    return wrk.format("POST", "/v1/receipts", nil,
                      string.format(success_body, grant[1], grant[2], grant[3]))
  elseif unclaimed > 0 then
    unclaimed = unclaimed - 1
    return wrk.format("POST", "/v1/leases", nil, claim_body)
  end
  return wrk.format("POST", "/v1/tasks", nil, create_body)
end

function response(status, headers, body)
  if status == 200 then
    -- The grant's own lease_id comes first; the task's ids are unique in the grant.
    local lease_id = string.match(body, '"lease_id":"([%x-]+)"')
    if lease_id then
      last = last + 1
      grants[last] = {string.match(body, '"task_id":"([%x-]+)"'), lease_id,
                      string.match(body, '"obligation_receipt_id":"([%x-]+)"')}
    else
      unclaimed = unclaimed + 1  -- concurrent claims held every task: claim again
    end
  elseif status == 201 and string.sub(body, 1, 11) == '{"receipt":' then
    completed = completed + 1
  elseif status == 201 then
    unclaimed = unclaimed + 1
  else
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local total, failed = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("completed")
    failed = failed + thread:get("failures")
  end
  io.write(string.format("cycles %d failures %d seconds %f\\n",
                         total, failed, summary.duration / 1e6))
end
"""


async def wrk_cycles(ctx: Context, port: int, seconds: int | None = None) -> tuple[int, float]:
    """Life cycles driven by wrk with two threads, as receipt ingest is, so the load generator
    costs little beside the server: (life cycles, seconds)."""
    script = ctx.workdir / "cycle.lua"
    script.write_text(CYCLE_LUA.replace("__KEY__", ctx.keys["cycles"]))
    result = await asyncio.to_thread(
        subprocess.run,
        [
            ctx.wrk, "-t2", f"-c{ctx.connections}",
            f"-d{seconds or max(1, round(ctx.duration))}s", "-s", str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = re.search(r"cycles (\d+) failures (\d+) seconds ([\d.]+)", result.stdout)
    assert found, result.stdout
    cycles, failures, taken = int(found[1]), int(found[2]), float(found[3])
    assert failures == 0, f"{failures} life-cycle requests failed:\n{result.stdout}"
    return cycles, taken


async def ceiling_cycles(ctx: Context, start: Callable[[dict[str, str]], Any]) -> float:
    """The same life cycles against bench/ceiling.py (the HTTP stack with no storage), served
    by ``start(env)`` as AsyncGate is; the server is stopped before returning."""
    server = start({"CEILING_KEY": ctx.keys["cycles"]})
    try:
        cpu_before = cpu_seconds(server.process.pid)
        cycles, seconds = await wrk_cycles(ctx, server.port)
        ctx.extra["ceiling_cpu_per_unit"] = (cpu_seconds(server.process.pid) - cpu_before) / max(
            1, cycles
        )
    finally:
        server.stop()
    return cycles / seconds


async def batched_cycles(conn: Connection) -> int:
    # Only the grants are read: parsing answers nobody looks at would take CPU from the server.
    await conn.expect("POST", "/v1/tasks/batch", {"tasks": [{"type": "batched"}] * 100}, 201)
    grants = await conn.json(
        "POST",
        "/v1/leases",
        {"worker": "worker:bench", "types": ["batched"], "max_tasks": 100, "ttl_seconds": 600},
    )
    if not grants:
        return 0
    receipts = [success_body(grant) for grant in grants]
    await conn.expect("POST", "/v1/receipts/batch", {"receipts": receipts}, 201)
    return len(grants)


# 3. Bootstrap --------------------------------------------------------------------------------

SEED_SQL = """
WITH t AS (
    SELECT gen_random_uuid() AS task_id, gen_random_uuid() AS obligation,
           gen_random_uuid() AS closer, now() - random() * interval '1 day' AS at
    FROM generate_series(1, %(count)s)
), tasks_in AS (
    INSERT INTO tasks (tenant, task_id, type, payload, principal, created_by, priority,
                       request_hash, state, obligation_receipt_id, obligation_open,
                       obligation_closed_by, created_at, updated_at)
    SELECT %(tenant)s, task_id, 'seed', '{}', 'service:bench', 'service:bench', 0, 'seed',
           CASE WHEN %(open)s THEN 'PENDING' ELSE 'FAILED' END, obligation, %(open)s,
           CASE WHEN %(open)s THEN NULL ELSE closer END, at, at
    FROM t
), obligations_in AS (
    INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                          parent_receipt_ids, body, artifacts, content_hash, created_at)
    SELECT %(tenant)s, obligation, 'task.assigned', task_id, 'service:bench', 'service:bench',
           '{}', '{"task_type": "seed", "priority": 0}', '[]', 'seed', at
    FROM t
), leases_in AS (
    -- Each closed task's lease record, released when it failed.
    INSERT INTO leases (tenant, lease_id, task_id, generation, worker, granted_at, expires_at,
                        released_at)
    SELECT %(tenant)s, gen_random_uuid(), task_id, 1, 'bench:seed', at, at + interval '1 minute',
           at + interval '1 second'
    FROM t WHERE NOT %(open)s
)
INSERT INTO receipts (tenant, receipt_id, type, task_id, from_principal, to_principal,
                      parent_receipt_ids, body, artifacts, content_hash, created_at)
SELECT %(tenant)s, closer, 'task.failure', task_id, 'service:bench', 'service:bench',
       ARRAY[obligation], '{"error": "seeded"}', '[]', 'seed', at + interval '1 second'
FROM t WHERE NOT %(open)s
"""


# The closest peer --------------------------------------------------------------------------

PGBOSS_DIR = Path(__file__).resolve().parent / "pgboss"


def ensure_pgboss(log: Callable[[str], None]) -> str:
    """Node.js's path, with pg-boss installed from npm as bench/pgboss/package-lock.json pins it."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit(
            "--peers drives pg-boss, which needs Node.js and npm: install them (Debian: "
            "apt-get install nodejs npm), or leave out --peers"
        )
    if not (PGBOSS_DIR / "node_modules" / "pg-boss").is_dir():
        log("installing pg-boss from npm into bench/pgboss/node_modules (for --peers)")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PGBOSS_DIR, check=True,
        )  # fmt: skip
    return node


class PgBossCycles:
    """pg-boss life cycles (send, fetch, complete), unbatched or 100 per call, from as many
    concurrent loops as the benchmark has connections (bench/pgboss/cycles.mjs), in the
    benchmark's database: its own schema, beside AsyncGate's tables. pg-boss is a library, so
    its one Node.js process is both what AsyncGate's server and its load generator are."""

    def __init__(self, ctx: Context, node: str, mode: str) -> None:
        self.ctx, self.node, self.mode = ctx, node, mode
        # Over every timed window so far: life cycles, Node.js's CPU and PostgreSQL's.
        self.cycles = 0
        self.node_cpu = self.pg_cpu = 0.0

    @staticmethod
    def version() -> str:
        return orjson.loads((PGBOSS_DIR / "package.json").read_bytes())["dependencies"]["pg-boss"]

    async def run(self, seconds: int) -> tuple[int, float]:
        """One slice: (life cycles finished inside its timed window, the window's seconds)."""
        ctx = self.ctx
        errors = ctx.workdir / f"pgboss-{self.mode}.err"
        with errors.open("wb") as stderr:  # a file, so that a chatty Node.js cannot block on it
            process = await asyncio.create_subprocess_exec(
                self.node, str(PGBOSS_DIR / "cycles.mjs"), ctx.database_url, self.mode,
                str(ctx.connections), str(seconds),
                stdout=asyncio.subprocess.PIPE, stderr=stderr,
            )  # fmt: skip
            try:
                result = await asyncio.wait_for(self._read(process), timeout=seconds + 120)
                await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        if process.returncode != 0 or result is None:
            raise RuntimeError(f"pg-boss {self.mode} failed:\n{errors.read_text()[-2000:]}")
        self.node_cpu += result["cpu_seconds"]
        self.cycles += int(result["cycles"])
        return int(result["cycles"]), float(result["seconds"])

    async def _read(self, process: asyncio.subprocess.Process) -> dict[str, float] | None:
        """The timed window's result line, with PostgreSQL's CPU over the window added up."""
        assert process.stdout is not None
        result = None
        pg_started = 0.0
        async for line in process.stdout:
            if line.strip() == b"start":
                pg_started = postgres_cpu_seconds()
            elif line.startswith(b"{"):
                self.pg_cpu += postgres_cpu_seconds() - pg_started
                result = orjson.loads(line)
        return result


async def seed(ctx: Context, tenant: str, count: int, open_: bool) -> None:
    async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as conn:
        for start in range(0, count, 50_000):
            params = {"tenant": tenant, "count": min(50_000, count - start), "open": open_}
            await conn.execute(SEED_SQL, params)


async def analyze(ctx: Context) -> None:
    """Fresh planner statistics before a timed phase, as autovacuum keeps them in a running
    system: the phases are seconds long, autovacuum wakes once a minute, and on tables it has
    never analyzed the planner guesses (a receipt then cost PostgreSQL three times as much).

    Then a wait for the server to read them: until it has seen large tables it plans every
    call (PlanMode), and it looks again only every few seconds, so the first timed seconds
    would otherwise pay the planner for every statement, as no running deployment of that
    size does.
    """
    async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as conn:
        await conn.execute("ANALYZE")
    if not ctx.quick:  # a smoke run's tables stay small: the server never switches
        await asyncio.sleep(PlanMode.CHECK_INTERVAL_UNTIL_LARGE)


async def settle(ctx: Context) -> None:
    """Let the bulk load's aftermath (dirty pages, stale statistics) finish before timing."""
    async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE tasks")
        await conn.execute("VACUUM ANALYZE receipts")
        await conn.execute("CHECKPOINT")


def _process_tree(pid: int) -> list[int]:
    """The server process and its children (uvicorn workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    return pids


def _status_kib(pid: int, field_name: str) -> int:
    total = 0
    for each in _process_tree(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def postgres_cpu_seconds() -> float:
    """User and system CPU of every PostgreSQL process on this machine so far (the bench's
    database is the only busy one while it runs)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (entry / "stat").read_text()
                if raw[raw.index("(") + 1 : raw.rindex(")")] == "postgres":
                    fields = raw.rsplit(")", 1)[1].split()
                    ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def wal_totals(ctx: Context) -> tuple[int, int, int]:
    """PostgreSQL's WAL so far, all databases (pg_stat_wal): flushes (fsyncs; a commit waits
    for one, and concurrent commits share one only when they reach it together), bytes, and
    full-page images (a page's first change after a checkpoint logs it whole)."""
    async with await psycopg.AsyncConnection.connect(ctx.database_url, autocommit=True) as conn:
        row = await (
            await conn.execute("SELECT wal_sync, wal_bytes, wal_fpi FROM pg_stat_wal")
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def run_delay_seconds(pid: int) -> float:
    """How long the server process tree has waited, runnable, for a core so far
    (/proc/<pid>/schedstat: time on a run queue, nanoseconds)."""
    nanoseconds = 0
    for each in _process_tree(pid):
        with contextlib.suppress(OSError):
            nanoseconds += int(Path(f"/proc/{each}/schedstat").read_text().split()[1])
    return nanoseconds / 1e9


def load_generator_cpu_seconds() -> float:
    """This process's CPU (the asyncio client) and that of its finished children (wrk)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Usage:
    """What a timed phase cost per unit: the server's, PostgreSQL's and the load generator's
    CPU, and PostgreSQL's WAL (flushes, bytes, full-page images), summed over the phase's
    slices (each ``begin`` to ``end``); ``publish`` sets the per-unit figures the table shows.

    It also sets how the server spent the slices' time: running (its CPU), and waiting,
    runnable, for a core that PostgreSQL or the load generator held. What is left it was idle,
    every request waiting on the database. A server that runs nearly all the time is bound by
    its own CPU; one that waits for a core shares a saturated machine.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.units = 0
        self.totals: dict[str, float] = {}
        self._at: dict[str, float] = {}

    async def _now(self) -> dict[str, float]:
        ctx = self.ctx
        flushes, wal_bytes, full_pages = await wal_totals(ctx)
        return {
            "cpu": cpu_seconds(ctx.server_pid),
            "pg_cpu": postgres_cpu_seconds(),
            "load_cpu": load_generator_cpu_seconds(),
            "flushes": flushes,
            "wal_bytes": wal_bytes,
            "full_pages": full_pages,
            "waited": run_delay_seconds(ctx.server_pid),
            "wall": time.monotonic(),
        }

    async def begin(self) -> None:
        self._at = await self._now()

    async def end(self, units: int) -> None:
        now = await self._now()
        for name, value in now.items():
            self.totals[name] = self.totals.get(name, 0.0) + value - self._at[name]
        self.units += units

    def publish(self, phase: str) -> None:
        units = max(1, self.units)
        for name in ("cpu", "pg_cpu", "load_cpu", "flushes", "wal_bytes", "full_pages"):
            self.ctx.extra[f"{phase}_{name}_per_unit"] = self.totals.get(name, 0.0) / units
        wall = self.totals.get("wall", 0.0)
        for name, total in (("running", "cpu"), ("waiting", "waited")):
            share = self.totals.get(total, 0.0) / wall if wall else 0.0
            self.ctx.extra[f"{phase}_server_{name}"] = share


JOINED = re.compile(r'asyncgate_joined_requests_(sum|count)\{kind="(\w+)"\} ([0-9.e+]+)')


async def joined_requests(ctx: Context) -> dict[str, tuple[float, float]]:
    """(requests, statements) so far for each kind of joined write, from /v1/metrics (one
    worker's, when there are several)."""
    conn = await ctx.connect("ingest")
    _, text = await conn.request("GET", "/v1/metrics")
    await conn.close()
    totals: dict[str, list[float]] = {}
    for part, kind, value in JOINED.findall(text.decode()):
        totals.setdefault(kind, [0.0, 0.0])[part == "count"] = float(value)
    return {kind: (requests, statements) for kind, (requests, statements) in totals.items()}


def cpu_seconds(pid: int) -> float:
    """User and system CPU the server process tree has used so far."""
    ticks = 0
    for each in _process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so the next peak is this phase's own."""
    for each in _process_tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{each}/clear_refs").write_text("5")


def peak_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


async def dump_once(conn: Connection, pid: int, expect_count: int) -> tuple[float, float]:
    """Seconds for one full GET /v1/obligations/open, and the server's peak RSS growth."""
    baseline = rss_mib(pid)
    reset_peak(pid)
    started = time.perf_counter()
    status, body = await conn.request("GET", "/v1/obligations/open")
    elapsed = time.perf_counter() - started
    growth = max(0.0, peak_mib(pid) - baseline)
    assert status == 200, body[:200]
    count = len(orjson.loads(body))
    assert count == expect_count, f"expected {expect_count} open obligations, got {count}"
    return elapsed, growth


async def bootstrap(ctx: Context) -> dict[str, Any]:
    """The same open set over a small and a large ledger: two tenants of one database, timed
    alternately so that machine noise falls on both alike."""
    open_count = ctx.size(10_000, 200)
    large_ledger = ctx.size(500_000, 4_000)
    big_open = ctx.size(100_000, 1_000)
    rounds = 3 if ctx.quick else 7
    await seed(ctx, "boot", open_count, True)
    await seed(ctx, "boot", open_count // 2, False)  # two receipts each: 2 x open_count in all
    await seed(ctx, "bootlarge", open_count, True)
    await seed(ctx, "bootlarge", (large_ledger - open_count) // 2, False)
    await seed(ctx, "bootbig", big_open, True)
    await settle(ctx)
    small, large = await ctx.connect("boot"), await ctx.connect("bootlarge")
    await dump_once(small, ctx.server_pid, open_count)  # warm both before timing
    await dump_once(large, ctx.server_pid, open_count)
    small_times, large_times, small_rss = [], [], []
    for _ in range(rounds):
        elapsed, growth = await dump_once(small, ctx.server_pid, open_count)
        small_times.append(elapsed)
        small_rss.append(growth)
        large_times.append((await dump_once(large, ctx.server_pid, open_count))[0])
    big = await ctx.connect("bootbig")
    _, big_rss = await dump_once(big, ctx.server_pid, big_open)
    for conn in (small, large, big):
        await conn.close()
    return {
        "open": open_count,
        "small_ledger": 2 * open_count,
        "large_ledger": open_count + 2 * ((large_ledger - open_count) // 2),
        "small_seconds": statistics.median(small_times),
        "large_seconds": statistics.median(large_times),
        "big_open": big_open,
        "small_rss_growth_mib": max(small_rss),
        "big_rss_growth_mib": big_rss,
        "baseline_rss_mib": rss_mib(ctx.server_pid),
    }


# 4. Contended claims -------------------------------------------------------------------------


async def contended_claims(ctx: Context) -> dict[str, Any]:
    total = ctx.size(10_000, 200)
    conn = await ctx.connect("claims")
    for start in range(0, total, 1000):
        tasks = [{"type": "contended"} for _ in range(min(1000, total - start))]
        await conn.json("POST", "/v1/tasks/batch", {"tasks": tasks}, expect=201)
    await conn.close()
    await analyze(ctx)
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
