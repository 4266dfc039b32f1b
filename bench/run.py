"""AsyncGate's benchmark: one command, PostgreSQL, a separate load process, one table of ratios.

    .venv/bin/python bench/run.py            # the full run (several minutes)
    .venv/bin/python bench/run.py --repeat 3 # three runs; the goals judged on their median
    .venv/bin/python bench/run.py --quick    # tiny sizes: keeps the command working in CI
    .venv/bin/python bench/run.py --peers    # and pg-boss in the same slices (needs Node.js)

It creates a throwaway database, starts `uvicorn asyncgate.main:app` on loopback, measures the
floor (bare psycopg async single-row INSERTs) in the same run, then drives the service with wrk
(receipt ingest, unbatched life cycles) and a lean asyncio client (batched life cycles, claims,
bootstrap). Speeds are reported as ratios measured side by side, never as bare times alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from scenarios import (  # noqa: E402  (bench/ is not a package)
    Context,
    Floor,
    Ingest,
    PgBossCycles,
    Usage,
    analyze,
    batched_cycles,
    bootstrap,
    ceiling_cycles,
    contended_claims,
    ensure_pgboss,
    for_duration,
    joined_requests,
    seed,
    wrk_cycles,
)

from asyncgate.http_protocol import JOINED_WRITES_PROTOCOL  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("ingest", "cycles", "batched", "claims", "bootstrap")
HISTORY = 20_000
TENANTS = ("ingest", "cycles", "batched", "boot", "bootlarge", "bootbig", "claims")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found; installing it from Debian's packages")
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, capture_output=True).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench: wrk is required (apt-get install wrk)")
    return found


@dataclass
class Served:
    """A uvicorn server started by the bench, in a session of its own."""

    process: subprocess.Popen
    port: int

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)


def serve(app: str, port: int, workers: int, env: dict[str, str]) -> Served:
    """``uvicorn app`` on loopback as ``asyncgate serve`` runs AsyncGate (no proxy headers
    unless asked for), once it listens."""
    command = [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--log-level", "warning", "--no-proxy-headers",
        "--loop", "uvloop", "--http", JOINED_WRITES_PROTOCOL,
    ]  # fmt: skip
    server = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return Served(server, port)
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"bench: {app} exited at startup") from None
            time.sleep(0.2)
    raise SystemExit(f"bench: {app} did not start within 30 s")


def start_server(ctx: Context, workers: int, keys_file: Path) -> Served:
    env = {
        "ASYNCGATE_ENV": "production",
        "ASYNCGATE_DATABASE_URL": ctx.database_url,
        "ASYNCGATE_API_KEYS_FILE": str(keys_file),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
        "ASYNCGATE_LOG_LEVEL": os.environ.get("BENCH_LOG", "WARNING"),
        "ASYNCGATE_DB_POOL_MIN_SIZE": os.environ.get("BENCH_POOL_MIN", "4"),
        "ASYNCGATE_DB_POOL_MAX_SIZE": os.environ.get("BENCH_POOL_MAX", "20"),
    }
    return serve("asyncgate.main:app", ctx.port, workers, env)


def start_profiler(pid: int, output: str) -> subprocess.Popen:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("bench: --profile needs py-spy (pip install py-spy)")
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", output,
               "--rate", "250", "--subprocesses"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="environment: BENCH_LOG=INFO shows the server's log lines; BENCH_POOL_MIN and"
        " BENCH_POOL_MAX size its PostgreSQL pool (default 4 and 20)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per timed phase, in all"
    )
    parser.add_argument(
        "--slices",
        type=int,
        help="slices the floor, ingest and life cycles are timed in, alternating "
        "(default 5; 1 with --quick)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases to run beside the floor (default all: {','.join(PHASES)})",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also time pg-boss (the closest peer, installed from npm; needs Node.js) in the "
        "same slices, unbatched and batched",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a database to create the throwaway bench database from",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="whole runs, each on a fresh database and server; with more than one, the goals "
        "are also judged on the median of the runs",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the server with py-spy into FILE (collapsed stacks; needs py-spy)",
    )
    args = parser.parse_args()
    phases = set(args.only.split(","))
    if unknown := phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if args.slices is None:
        args.slices = 1 if args.quick else 5
    if args.slices < 1:
        parser.error("--slices must be at least 1")
    if args.quick:
        args.duration = min(args.duration, 1.5)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.repeat > 1 and args.profile:
        parser.error("--profile records one run: leave out --repeat")
    if args.peers:
        phases.add("pgboss")

    wrk = ensure_wrk()
    node = ensure_pgboss(log) if args.peers else None
    runs = []
    for number in range(1, args.repeat + 1):
        if args.repeat > 1:
            log(f"run {number} of {args.repeat}")
        rows, goals = one_run(args, phases, wrk, node)
        print_table(rows, args)
        runs.append(goals)
    if args.repeat > 1:
        print_goals(runs)
    return 0


def one_run(
    args: argparse.Namespace, phases: set[str], wrk: str, node: str | None
) -> tuple[list[tuple[str, str, str]], dict[str, float]]:
    """One whole run, on a database and server of its own: its table and its goals' figures."""
    name = f"asyncgate_bench_{os.getpid()}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + name
    keys = {tenant: secrets.token_urlsafe(24) for tenant in TENANTS}
    workdir = Path(tempfile.mkdtemp(prefix="asyncgate-bench-"))
    keys_file = workdir / "keys"
    from asyncgate.settings import hash_key

    keys_file.write_text("".join(f"{hash_key(k)} {t} service:bench\n" for t, k in keys.items()))
    ctx = Context(
        port=free_port(),
        database_url=database_url,
        keys=keys,
        connections=args.connections,
        duration=args.duration,
        slices=args.slices,
        quick=args.quick,
        wrk=wrk,
        workdir=workdir,
        log=log,
    )
    server = profiler = None
    try:
        server = start_server(ctx, args.workers, keys_file)
        ctx.server_pid = server.process.pid
        ctx.extra["serve_ceiling"] = lambda env: serve("bench.ceiling:app", free_port(), 1, env)
        ctx.extra["node"] = node
        if args.profile:
            profiler = start_profiler(server.process.pid, args.profile)
        rows = asyncio.run(run_all(ctx, phases))
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        if server is not None:
            server.stop()
        with psycopg.connect(args.pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)
    return rows, ctx.goals


async def run_all(ctx: Context, phases: set[str]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    # A running deployment's tables hold history (closed tasks are kept until pruned); a near
    # empty table is planned differently (see the README's Performance section).
    history = ctx.size(HISTORY, 500)
    ctx.log(f"history: {history:,} closed tasks of another tenant, with their receipts")
    await seed(ctx, "history", history, False)
    ctx.log(
        "floor, 1. receipt ingest and 2. life cycles (one request each, and batched), side by "
        f"side: {ctx.slices} slices of each"
    )
    rates, ingest_errors, joined = await side_by_side(ctx, phases)
    floor_rate = rates["floor"]
    rows.append(("floor: psycopg INSERTs/s", f"{floor_rate:,.0f}", "1.00 (reference)"))

    ingest_rate = single = None
    if "ingest" in phases:
        ingest_rate = rates["ingest"]
        ratio = ingest_rate / floor_rate
        ctx.goals["ingest"] = ratio
        rows.append((
            "1. receipt ingest/s",
            f"{ingest_rate:,.0f} ({ingest_errors} non-2xx)",
            f"{shown('ingest', ratio)} x floor; goal >= 0.6: {verdict_of('ingest', ratio)}",
        ))  # fmt: skip
        rows.append(cpu_row(ctx, "ingest", "1. CPU per receipt"))
        rows.append(joined_row(joined, "1.", ["append"]))

    if "cycles" in phases:
        single = rates["cycles"]
        verdict = f"{single / floor_rate:.2f} x floor"
        if ingest_rate:
            vs_ingest = single / ingest_rate
            ctx.goals["unbatched"] = vs_ingest
            verdict += (
                f"; {shown('unbatched', vs_ingest)} x ingest; "
                f"goal >= 0.25 x ingest: {verdict_of('unbatched', vs_ingest)}"
            )
        rows.append(("2. life cycles/s, unbatched", f"{single:,.0f}", verdict))
        rows.append(cpu_row(ctx, "cycles", "2. CPU per life cycle, unbatched"))
        rows.append(joined_row(joined, "2.", ["create", "claim", "settle"]))
        ctx.log("2. the same life cycles against the HTTP stack alone (bench/ceiling.py)")
        ceiling = await ceiling_cycles(ctx, ctx.extra["serve_ceiling"])
        rows.append((
            "2. HTTP ceiling: life cycles/s, no storage",
            f"{ceiling:,.0f}",
            f"{ceiling / floor_rate:.2f} x floor; unbatched above is {single / ceiling:.2f} x this",
        ))  # fmt: skip
        rows.append((
            "2. CPU per life cycle, HTTP ceiling",
            f"{ctx.extra['ceiling_cpu_per_unit'] * 1e6:,.0f} us",
            "server (uvicorn, no storage)",
        ))  # fmt: skip
    if "batched" in phases:
        batched = rates["batched"]
        verdict = f"{batched / floor_rate:.2f} x floor"
        if single:
            ctx.goals["batched"] = batched / single
            verdict += (
                f"; {shown('batched', batched / single)} x unbatched; "
                f"goal >= 5x: {verdict_of('batched', batched / single)}"
            )
        rows.append(("2. life cycles/s, batched (100)", f"{batched:,.0f}", verdict))
        rows.append(cpu_row(ctx, "batched", "2. CPU per life cycle, batched"))

    if "pgboss" in phases:
        rows += peer_rows(ctx, rates)

    if "claims" in phases:
        ctx.log("4. contended claims")
        claims = await contended_claims(ctx)
        ctx.goals["claims"] = claims["double_leases"]
        rows.append((
            f"4. claims/s, {ctx.connections} claimers over {claims['tasks']:,} tasks",
            f"{claims['rate']:,.0f}",
            f"{claims['rate'] / floor_rate:.2f} x floor; double leases: {claims['double_leases']}"
            f" ({'met' if claims['double_leases'] == 0 else 'NOT met'})",
        ))  # fmt: skip
    if "bootstrap" in phases:
        # Last: its bulk seeding would otherwise leave vacuum work behind for the other phases.
        ctx.log("3. bootstrap over a small and a large ledger")
        boot = await bootstrap(ctx)
        growth = boot["large_seconds"] / boot["small_seconds"]
        ctx.goals["bootstrap"] = growth
        rows.append((
            f"3. bootstrap {boot['open']:,} open, ledger {boot['small_ledger']:,}",
            f"{boot['small_seconds'] * 1000:,.0f} ms",
            "1.00 (reference)",
        ))  # fmt: skip
        rows.append((
            f"3. bootstrap {boot['open']:,} open, ledger {boot['large_ledger']:,}",
            f"{boot['large_seconds'] * 1000:,.0f} ms",
            f"{shown('bootstrap', growth)} x small ledger; goal <= 1.5:"
            f" {verdict_of('bootstrap', growth)}",
        ))  # fmt: skip
        rows.append((
            f"3. server RSS streaming {boot['big_open']:,} open",
            f"+{boot['big_rss_growth_mib']:.1f} MiB",
            f"vs +{boot['small_rss_growth_mib']:.1f} MiB for {boot['open']:,} "
            f"(baseline {boot['baseline_rss_mib']:.0f} MiB)",
        ))  # fmt: skip

    return rows


async def side_by_side(
    ctx: Context, phases: set[str]
) -> tuple[dict[str, float], int, dict[str, tuple[float, float]]]:
    """The floor, receipt ingest and life cycles (unbatched and batched), timed in
    alternating slices.

    Goals 1 and 2 are ratios between these rates. Run one after another, each would meet a
    different machine: a shared machine's speed drifts within seconds, and each phase leaves
    autovacuum work to the next. In slices, taken in a rotating order, they all share the
    machine's moods. Returns each rate, ingest's non-2xx answers, and the requests and
    statements of each joined kind in the ingest and unbatched slices.
    """
    seconds = max(1, round(ctx.duration / ctx.slices))
    floor = await Floor(ctx).open()
    ingest = await Ingest(ctx).open() if "ingest" in phases else None
    await analyze(ctx)
    done = {
        name: [0, 0.0]
        for name in ("floor", "ingest", "cycles", "batched", *(peer for peer, _, _ in PEER_PHASES))
    }
    usage = {name: Usage(ctx) for name in ("ingest", "cycles", "batched")}
    # Requests and statements of each joined kind during the unbatched slices only: batch
    # requests share the create and claim statements.
    joined: dict[str, tuple[float, float]] = {}
    errors = 0

    async def counting_joins(timed: Callable[[], Awaitable[None]]) -> None:
        before = await joined_requests(ctx)
        await timed()
        for kind, (requests, statements) in (await joined_requests(ctx)).items():
            was_requests, was_statements = before.get(kind, (0.0, 0.0))
            sum_requests, sum_statements = joined.get(kind, (0.0, 0.0))
            joined[kind] = (
                sum_requests + requests - was_requests,
                sum_statements + statements - was_statements,
            )

    def add(name: str, units: int, taken: float) -> None:
        done[name][0] += units
        done[name][1] += taken

    async def floor_slice() -> None:
        add("floor", *await floor.run(seconds))

    async def ingest_slice() -> None:
        nonlocal errors
        assert ingest is not None
        await usage["ingest"].begin()
        requests, taken, failed = await ingest.run(seconds)
        await usage["ingest"].end(requests)
        add("ingest", requests, taken)
        errors += failed

    async def cycles_slice() -> None:
        await usage["cycles"].begin()
        cycles, taken = await wrk_cycles(ctx, ctx.port, seconds)
        await usage["cycles"].end(cycles)
        add("cycles", cycles, taken)

    async def batched_slice() -> None:
        add(
            "batched",
            *await for_duration(ctx, batched_cycles, "batched", seconds, usage["batched"]),
        )

    order: list[tuple[str, Callable[[], Awaitable[None]]]] = [("floor", floor_slice)]
    order += [("ingest", lambda: counting_joins(ingest_slice))] if ingest else []
    order += [("cycles", lambda: counting_joins(cycles_slice))] if "cycles" in phases else []
    order += [("batched", batched_slice)] if "batched" in phases else []
    if "pgboss" in phases:
        for name, mode, _ in PEER_PHASES:
            peer = ctx.extra[name] = PgBossCycles(ctx, ctx.extra["node"], mode)

            async def peer_slice(name: str = name, peer: PgBossCycles = peer) -> None:
                add(name, *await peer.run(seconds))

            order.append((name.replace("_", " "), peer_slice))
    try:
        for index in range(ctx.slices):
            turn = order[index % len(order) :] + order[: index % len(order)]
            ctx.log(f"slice {index + 1} of {ctx.slices}: {', '.join(name for name, _ in turn)}")
            for _, run_slice in turn:
                await run_slice()
    finally:
        await floor.close()
    for phase, phase_usage in usage.items():
        phase_usage.publish(phase)
    rates = {name: count / taken for name, (count, taken) in done.items() if taken}
    return rates, errors, joined


# pg-boss's phases under --peers: (phase, mode, AsyncGate's phase it is set against).
PEER_PHASES = (("pgboss_cycles", "unbatched", "cycles"), ("pgboss_batched", "batched", "batched"))


def peer_rows(ctx: Context, rates: dict[str, float]) -> list[tuple[str, str, str]]:
    """pg-boss's life cycles, timed in the same slices as AsyncGate's, against the same floor."""
    rows = []
    for name, mode, ours in PEER_PHASES:
        size = " (100)" if mode == "batched" else ""
        peer: PgBossCycles = ctx.extra[name]
        rate = rates.get(name, 0.0)
        verdict = f"{rate / rates['floor']:.2f} x floor"
        if rate and ours in rates:
            verdict += f"; AsyncGate's {mode} above is {rates[ours] / rate:.2f} x this"
        rows.append(
            (f"peer: pg-boss {peer.version()} life cycles/s, {mode}{size}", f"{rate:,.0f}", verdict)
        )
        cycles = max(1, peer.cycles)
        rows.append((
            f"peer: CPU per life cycle, {mode}",
            f"{peer.node_cpu / cycles * 1e6:,.0f} / {peer.pg_cpu / cycles * 1e6:,.0f} us",
            "Node.js (pg-boss, a library, and the loops driving it) / PostgreSQL",
        ))  # fmt: skip
    return rows


def cpu_row(ctx: Context, phase: str, label: str) -> tuple[str, str, str]:
    """CPU per unit, of the server, of PostgreSQL and of the load generator: unlike a rate, it
    hardly moves with what else the machine runs."""
    server = ctx.extra[f"{phase}_cpu_per_unit"] * 1e6
    database = ctx.extra[f"{phase}_pg_cpu_per_unit"] * 1e6
    load = ctx.extra[f"{phase}_load_cpu_per_unit"] * 1e6
    flushes = ctx.extra[f"{phase}_flushes_per_unit"]
    wal_kib = ctx.extra[f"{phase}_wal_bytes_per_unit"] / 1024
    full_pages = ctx.extra[f"{phase}_full_pages_per_unit"]
    running = ctx.extra[f"{phase}_server_running"]
    waiting = ctx.extra[f"{phase}_server_waiting"]
    return (
        label,
        f"{server:,.0f} / {database:,.0f} / {load:,.0f} us",
        f"server (uvicorn) / PostgreSQL / load generator; WAL: {flushes:.2f} flushes, "
        f"{wal_kib:.1f} KiB ({full_pages:.2f} full pages) each; the server ran "
        f"{running:.0%} of the time, waited {waiting:.0%} for a core",
    )


def joined_row(
    joined: dict[str, tuple[float, float]], number: str, kinds: list[str]
) -> tuple[str, str, str]:
    """Requests per statement during a phase: how much of the load the coalescer joined."""
    means = []
    for kind in kinds:
        requests, statements = joined.get(kind, (0.0, 0.0))
        means.append(f"{requests / statements:.1f}" if statements else "-")
    return (
        f"{number} requests per statement",
        " / ".join(means),
        " / ".join(kinds) + " (concurrent requests joined; see coalesce.py)",
    )


def print_table(rows: list[tuple[str, str, str]], args: argparse.Namespace) -> None:
    quick = " (quick)" if args.quick else ""
    print_boxed(
        f"AsyncGate benchmark: PostgreSQL, {args.workers} uvicorn worker(s), "
        f"{args.connections} connections, {args.duration:g} s phases"
        f" (floor, ingest and life cycles in {args.slices} alternating slices){quick}",
        ["measure", "result", "ratio and goal"],
        [list(row) for row in rows],
    )


def print_boxed(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A title, then a table boxed in ASCII with its columns padded to their widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    print(f"\n{title}")
    print(line)
    for row in [header, *rows]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if row is header:
            print(line)
    print(line)


# Each goal: its label, the decimals its figure is shown with, how the runs' figures are
# summed up (the median; double leases are counted in every run) and whether a figure meets it.
GOALS = {
    "ingest": ("1. receipt ingest, x floor (>= 0.6)", 2, statistics.median,
               lambda v: v >= 0.6),
    "unbatched": ("2. unbatched life cycles, x ingest (>= 0.25)", 2, statistics.median,
                  lambda v: v >= 0.25),
    "batched": ("2. batched life cycles, x unbatched (>= 5)", 1, statistics.median,
                lambda v: v >= 5),
    "bootstrap": ("3. bootstrap, large ledger vs small (<= 1.5)", 2, statistics.median,
                  lambda v: v <= 1.5),
    "claims": ("4. double leases (none in any run)", 0, sum, lambda v: v == 0),
}  # fmt: skip


def shown(goal: str, figure: float) -> str:
    """A goal's figure to its usual decimals, or more where rounding would put it on the other
    side of the goal's line: 0.2477 shows as 0.248, not as a 0.25 that is "NOT met"."""
    _, decimals, _, meets = GOALS[goal]
    text = f"{figure:.{decimals}f}"
    while meets(float(text)) != meets(figure) and decimals < 6:
        decimals += 1
        text = f"{figure:.{decimals}f}"
    return text


def verdict_of(goal: str, figure: float) -> str:
    return "met" if GOALS[goal][3](figure) else "NOT met"


def print_goals(runs: list[dict[str, float]]) -> None:
    """The goals over every run, judged on their median: one run on a shared machine can land
    on either side of a line that the median does not cross."""
    header = ["goal", *(f"run {n}" for n in range(1, len(runs) + 1)), "all runs", "verdict"]
    table = []
    for key, (label, _, summed_up, _) in GOALS.items():
        figures = [run[key] for run in runs if key in run]
        if not figures:
            continue
        overall = summed_up(figures)
        table.append([
            label,
            *(shown(key, figure) for figure in figures),
            shown(key, overall),
            verdict_of(key, overall),
        ])  # fmt: skip
    title = f"Goals over {len(runs)} runs, judged on the median (double leases: their sum)"
    print_boxed(title, header, table)


if __name__ == "__main__":
    sys.exit(main())
