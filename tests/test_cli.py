"""The asyncgate command: help, migrate (idempotent) and prune (never an open obligation)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import orjson
import pytest
from conftest import create_pg_database, drop_pg_database, pg_url

from asyncgate import PROJECT_ROOT, plugins
from asyncgate.ids import utcnow
from asyncgate.ledger import Ledger
from asyncgate.metrics import Metrics
from asyncgate.settings import Settings


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "asyncgate.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("serve", "migrate", "keys", "prune"):
        assert command in result.stdout
    for command in (["serve"], ["migrate"], ["keys", "mint"], ["prune"]):
        sub = run_cli(*command, "--help")
        assert sub.returncode == 0 and "usage: asyncgate" in sub.stdout


def test_migrate_is_idempotent(database_url):
    env = {"ASYNCGATE_DATABASE_URL": database_url}
    first = run_cli("migrate", env=env)
    second = run_cli("migrate", env=env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "up to date" in second.stdout


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_migrate_logs_each_migration_as_it_starts_and_ends(dialect, tmp_path):
    """Some migrations rebuild indexes for minutes: the operator sees which one is running."""
    if dialect == "sqlite":
        name, url = None, f"sqlite:///{tmp_path}/fresh.db"
    else:
        name = create_pg_database("asyncgate_cli")
        url = pg_url(name)
    try:
        result = run_cli("migrate", env={"ASYNCGATE_DATABASE_URL": url})
        again = run_cli("migrate", env={"ASYNCGATE_DATABASE_URL": url})
    finally:
        if name:
            drop_pg_database(name)
    assert result.returncode == 0, result.stderr
    files = sorted(path.name for path in (PROJECT_ROOT / "migrations" / dialect).glob("*.sql"))
    logged = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    events = [(entry["message"].split(" migration ")[0], entry["migration"]) for entry in logged]
    assert events == [(verb, file) for file in files for verb in ("applying", "applied")]
    assert all(entry["seconds"] >= 0 for entry in logged if entry["message"].startswith("applied"))
    assert [f"applied {file}" for file in files] == result.stdout.splitlines()
    assert "migration" not in again.stderr and "up to date" in again.stdout


def test_serve_refuses_without_keys_in_production(tmp_path):
    result = run_cli("serve", env={"ASYNCGATE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    assert result.returncode == 2
    assert "ASYNCGATE_API_KEY" in result.stderr


def test_prune_removes_only_closed_idle_tasks(client, database_url):
    open_task = client.create_task()
    closed = client.create_task()
    client.receipt(
        type="task.failure",
        task_id=closed["task_id"],
        parent_receipt_ids=[closed["obligation_receipt_id"]],
    )
    unlinked = client.create_task()  # terminal, but its obligation is still open
    client.receipt(type="task.cancelled", task_id=unlinked["task_id"])

    settings = Settings.from_env({"ASYNCGATE_DATABASE_URL": database_url}, require_keys=False)

    async def prune(cutoff):
        dialect = plugins.dialect_for(settings)
        try:
            return await Ledger(dialect, settings, Metrics(), _ignore).prune(cutoff)
        finally:
            await dialect.close()

    # Nothing is old enough yet.
    asyncio.run(prune(utcnow() - timedelta(days=1)))
    assert client.get(f"/v1/tasks/{closed['task_id']}").status_code == 200
    # With a cutoff in the future every closed task is idle long enough.
    asyncio.run(prune(utcnow() + timedelta(seconds=5)))
    assert client.get(f"/v1/tasks/{closed['task_id']}").status_code == 404
    assert client.get(f"/v1/receipts?task_id={closed['task_id']}").json == []
    for kept in (open_task, unlinked):
        assert client.get(f"/v1/tasks/{kept['task_id']}").status_code == 200
        assert client.get(f"/v1/receipts?task_id={kept['task_id']}").json
    open_ids = {o["receipt_id"] for o in client.get("/v1/obligations/open").json}
    assert open_ids == {open_task["obligation_receipt_id"], unlinked["obligation_receipt_id"]}


def test_prune_command_reports_progress(tmp_path):
    env = {"ASYNCGATE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db"}
    assert run_cli("migrate", env=env).returncode == 0
    result = run_cli("prune", "--days", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "pruned 0 tasks" in result.stdout
    assert "pruning closed tasks" in result.stderr


async def _ignore(anomalies, tenant):
    return None
