"""The benchmark command keeps working: a smoke run on tiny sizes (no timing is asserted)."""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

from asyncgate import PROJECT_ROOT


def run_bench(script: str, *args: str, timeout: int = 300) -> str:
    """Run ``bench/<script>`` with ``args``; its standard output, once it exited 0."""
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_bench_quick_run_prints_every_row_of_the_table():
    table = run_bench("run.py", "--quick", "--duration", "1", "--repeat", "2", timeout=600)
    assert table.count("AsyncGate benchmark: PostgreSQL") == 2  # one table per run
    goals = table.split("Goals over 2 runs", 1)[1]
    for goal in ("1. receipt ingest", "2. unbatched", "2. batched", "3. bootstrap", "4. double"):
        assert goal in goals, f"missing goal {goal!r}:\n{goals}"
    assert "| 0 " in goals.split("4. double leases", 1)[1]
    for row in (
        "floor: psycopg INSERTs/s",
        "1. receipt ingest/s",
        "2. life cycles/s, unbatched",
        "2. life cycles/s, batched (100)",
        "2. HTTP ceiling: life cycles/s, no storage",
        "3. bootstrap",
        "3. server RSS streaming",
        "4. claims/s",
    ):
        assert row in table, f"missing row {row!r}:\n{table}"
    assert "(0 non-2xx)" in table
    assert "double leases: 0 (met)" in table
    assert "1. CPU per receipt" in table
    # Per run: ingest, unbatched and batched life cycles.
    assert table.count("full pages) each") == 2 * 3  # the WAL figures


def test_bench_times_its_ratios_in_rotating_slices():
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "run.py"), "--quick", "--duration", "3",
         "--slices", "3", "--only", "ingest,cycles,batched"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "in 3 alternating slices" in result.stdout
    slices = [line.split(": ", 1)[1] for line in result.stderr.splitlines() if "] slice " in line]
    # Each slice starts one phase later than the one before, so none always goes first.
    assert slices == [
        "floor, ingest, cycles, batched",
        "ingest, cycles, batched, floor",
        "cycles, batched, floor, ingest",
    ], result.stderr
    for row in ("1. receipt ingest/s", "2. life cycles/s, unbatched", "2. life cycles/s, batched"):
        assert row in result.stdout, f"missing row {row!r}:\n{result.stdout}"
    assert "claims/s" not in result.stdout  # phases left out stay out


@pytest.mark.skipif(shutil.which("node") is None, reason="--peers drives pg-boss on Node.js")
def test_bench_peers_times_pg_boss_in_the_same_slices():
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "run.py"), "--quick", "--duration", "1",
         "--only", "batched", "--peers"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "slice 1 of 1: floor, batched, pgboss cycles, pgboss batched" in result.stderr
    peers = [line for line in result.stdout.splitlines() if "peer: pg-boss" in line]
    assert [line.split("|")[1].strip() for line in peers] == [
        "peer: pg-boss 12.38.0 life cycles/s, unbatched",
        "peer: pg-boss 12.38.0 life cycles/s, batched (100)",
    ], result.stdout
    for line in peers:
        assert int(line.split("|")[2].strip().replace(",", "")) > 0, line  # life cycles finished
    assert "AsyncGate's batched above is" in result.stdout


def test_inprocess_bench_reports_every_operation():
    output = run_bench("inprocess.py", "--count", "20")
    for operation in (
        "progress receipt",
        "create task",
        "claim one task",
        "success receipt",
        "batched create",
        "batched claim",
        "batched success",
        "batched life cycle",
    ):
        assert operation in output, f"missing {operation!r}:\n{output}"


def test_inprocess_bench_times_joined_requests_when_asked():
    output = run_bench("inprocess.py", "--count", "40", "--concurrency", "4")
    joined = {
        line.split(" (")[0]: line
        for line in output.splitlines()
        if line.startswith(("joined", "life cycle /"))
    }
    assert set(joined) == {"joined progress", "joined life cycle", "life cycle / progress"}, output
    ratio = float(joined["life cycle / progress"].split()[-4])
    assert ratio > 1, output  # a life cycle is three requests


def test_sqlite_joined_bench_reports_both_ways():
    output = run_bench("sqlite_joined.py", "--count", "64")
    for line in ("joined (as served)", "one statement each", "ratio"):
        assert line in output, f"missing {line!r}:\n{output}"


def test_collation_bench_reports_the_default_and_bytewise_keys():
    output = run_bench("collation.py", "--rows", "1000", "--rounds", "1")
    for line in ("database default (", '"C"', 'x "C"'):
        assert line in output, f"missing {line!r}:\n{output}"


def test_statement_bench_reports_this_tree_beside_a_revision():
    output = run_bench("statement_cpu.py", "--against", "HEAD", "--rounds", "13")
    lines = [line.split() for line in output.splitlines() if " us  (" in line]
    assert [line[0] for line in lines] == ["HEAD", "this"], output
    assert all(float(line[-3]) > 0 for line in lines), output


def test_schema_bench_reports_this_tree_beside_a_variant():
    index = "CREATE INDEX tasks_by_age ON tasks (tenant, created_at, task_id)"
    output = run_bench("schema_cpu.py", "--rounds", "13", "--variant", f"with tasks_by_age={index}")
    lines = [line.rsplit(None, 3) for line in output.splitlines() if " us  (" in line]
    assert [line[0].strip() for line in lines] == ["with tasks_by_age", "this tree"], output
    assert all(float(line[1]) > 0 for line in lines), output


def bench_module(name: str) -> Any:
    """``bench/<name>.py`` imported (bench/ is not a package; its modules import each other)."""
    sys.path.insert(0, str(PROJECT_ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(PROJECT_ROOT / "bench"))


def test_a_goal_figure_never_rounds_across_its_line():
    run = bench_module("run")
    assert (run.shown("unbatched", 0.2477), run.verdict_of("unbatched", 0.2477)) == (
        "0.248",
        "NOT met",
    )
    assert (run.shown("unbatched", 0.2533), run.verdict_of("unbatched", 0.2533)) == ("0.25", "met")
    assert run.shown("batched", 4.98) == "4.98"
    assert run.shown("batched", 5.04) == "5.0"
    assert run.shown("bootstrap", 1.503) == "1.503"


def test_a_slice_counts_its_steady_window_not_its_fill_and_drain():
    scenarios = bench_module("scenarios")

    class Conn:
        calls = 0

        async def close(self) -> None:
            pass

    class Ctx:
        connections = 4

        async def connect(self, tenant: str) -> Conn:
            return Conn()

    class Usage:
        units = 0

        async def begin(self) -> None:
            pass

        async def end(self, units: int) -> None:
            Usage.units = units

    async def worker(conn: Conn) -> int:
        # A slow first call (the pipeline filling), then 20 calls a second per connection.
        conn.calls += 1
        await asyncio.sleep(0.3 if conn.calls == 1 else 0.05)
        return 1

    units, seconds = asyncio.run(scenarios.for_duration(Ctx(), worker, "t", 1.2, Usage()))
    assert seconds == pytest.approx(0.9)  # the slice after its first quarter
    assert units / seconds == pytest.approx(4 * 20, rel=0.2)  # the steady rate
    # Every call is in the CPU per unit, and counted from start to finish the rate is lower.
    assert Usage.units > units
    assert Usage.units / 1.2 < 0.9 * units / seconds


def test_run_delay_is_time_spent_waiting_for_a_core_not_on_one():
    """Three spinning processes pinned to one core each run about a third of the time and wait
    about two thirds: the benchmark's "waited for a core" must read the second, not the first."""
    scenarios = bench_module("scenarios")
    spin = "import time\nend = time.monotonic() + 1.2\nwhile time.monotonic() < end: pass\n"
    core = min(os.sched_getaffinity(0))
    spinners = [
        subprocess.Popen(
            [sys.executable, "-c", spin], preexec_fn=lambda: os.sched_setaffinity(0, {core})
        )
        for _ in range(3)
    ]
    try:
        time.sleep(0.9)
        waited = [scenarios.run_delay_seconds(each.pid) for each in spinners]
        ran = [scenarios.cpu_seconds(each.pid) for each in spinners]
    finally:
        for each in spinners:
            each.wait(timeout=30)
    for waiting, running in zip(waited, ran, strict=True):
        assert waiting > 1.5 * running, (waited, ran)
