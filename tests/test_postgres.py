"""The PostgreSQL dialect: several instances on one database, migrations, outages.

Everything runs against the real server; concurrency is real (many requests in flight
on one event loop, against two app instances with a connection pool each).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import falcon.asgi
import falcon.testing
import psycopg
import pytest
from asyncgate_postgres import PostgresDialect, conninfo_from_url
from conftest import Tenants, create_pg_database, drop_pg_database, pg_url

from asyncgate import PROJECT_ROOT, plugins
from asyncgate.app import create_app
from asyncgate.settings import ConfigError, Settings

MIGRATIONS = sorted(path.name for path in (PROJECT_ROOT / "migrations" / "postgres").glob("*.sql"))

TASKS = 400
CLAIMERS = 20
PROBLEM_JSON = "application/problem+json"


def pg_app(url: str, tenants: Tenants, **overrides: str) -> falcon.asgi.App:
    env = {
        "ASYNCGATE_ENV": "test",
        "ASYNCGATE_DATABASE_URL": url,
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
        **{f"ASYNCGATE_{name}": value for name, value in overrides.items()},
    }
    return create_app(Settings.from_env(env))


@asynccontextmanager
async def instances(
    count: int, url: str, tenants: Tenants, **overrides: str
) -> AsyncIterator[list[falcon.testing.ASGIConductor]]:
    """``count`` independent app instances (own pool, own lifespan) on one database."""
    conductors = [
        falcon.testing.ASGIConductor(pg_app(url, tenants, **overrides)) for _ in range(count)
    ]
    for conductor in conductors:
        await conductor.__aenter__()
    try:
        yield conductors
    finally:
        for conductor in reversed(conductors):
            await conductor.__aexit__(None, None, None)


def auth(tenants: Tenants, name: str = "a") -> dict[str, str]:
    return {"Authorization": f"Bearer {tenants.keys[name]}"}


@pytest.fixture
def database_url(pg_database: str) -> str:
    """This module is about PostgreSQL alone: ``client`` here is never SQLite."""
    return pg_database


@pytest.fixture
def fresh_database() -> Any:
    name = create_pg_database("asyncgate_fresh")
    yield pg_url(name)
    drop_pg_database(name)


# URL forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "postgresql+psycopg", "postgresql+asyncpg", "POSTGRESQL"]
)
def test_every_postgres_url_form_selects_the_postgres_dialect(scheme: str) -> None:
    url = f"{scheme}://app:secret@db.example:6432/asyncgate?sslmode=require"
    dialect = plugins.dialect_for(Settings(database_url=url))
    assert isinstance(dialect, PostgresDialect)
    assert dialect.name == "postgres"
    params = psycopg.conninfo.conninfo_to_dict(dialect.conninfo)
    assert params["host"] == "db.example" and params["port"] == "6432"
    assert params["dbname"] == "asyncgate" and params["sslmode"] == "require"
    assert params["application_name"] == "asyncgate"


def test_a_given_application_name_is_kept() -> None:
    conninfo = conninfo_from_url("postgresql://h/db?application_name=billing-gate")
    assert psycopg.conninfo.conninfo_to_dict(conninfo)["application_name"] == "billing-gate"


def test_a_malformed_postgres_url_stops_startup_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="ASYNCGATE_DATABASE_URL"):
        plugins.dialect_for(Settings(database_url="postgresql:no-slashes"))


# Several instances on one database -------------------------------------------------------


@pytest.mark.anyio
async def test_two_instances_lease_every_task_exactly_once_under_concurrent_claimers(
    pg_database: str, tenants: Tenants
) -> None:
    headers = auth(tenants)
    async with instances(2, pg_database, tenants) as apps:
        obligations: dict[str, str] = {}
        for start in range(0, TASKS, 100):
            specs = [
                {"type": "render" if n % 2 else "encode", "priority": n % 7, "payload": {"n": n}}
                for n in range(start, start + 100)
            ]
            result = await apps[start // 100 % 2].simulate_post(
                "/v1/tasks/batch", headers=headers, json={"tasks": specs}
            )
            assert result.status_code == 201, result.text
            obligations.update(
                (task["task_id"], task["obligation_receipt_id"]) for task in result.json["tasks"]
            )

        grants: list[dict[str, Any]] = []
        in_flight = peak = 0

        async def claimer(number: int) -> None:
            nonlocal in_flight, peak
            app = apps[number % 2]
            worker = f"worker:w{number}"
            while True:
                in_flight += 1
                peak = max(peak, in_flight)
                claimed = await app.simulate_post(
                    "/v1/leases",
                    headers=headers,
                    json={"worker": worker, "max_tasks": 1 + number % 3, "ttl_seconds": 600},
                )
                in_flight -= 1
                assert claimed.status_code == 200, claimed.text
                if not claimed.json:
                    return
                for grant in claimed.json:
                    grants.append({**grant, "worker": worker})
                    task = grant["task"]
                    common = {
                        "task_id": task["task_id"],
                        "lease_id": grant["lease_id"],
                        "parent_receipt_ids": [task["obligation_receipt_id"]],
                    }
                    started = await app.simulate_post(
                        "/v1/receipts", headers=headers, json={"type": "task.started", **common}
                    )
                    assert started.status_code == 201, started.text
                    # The success goes through the other instance: the lease is the database's.
                    success = await apps[(number + 1) % 2].simulate_post(
                        "/v1/receipts",
                        headers=headers,
                        json={
                            "type": "task.success",
                            "artifacts": [{"uri": f"s3://out/{task['task_id']}"}],
                            **common,
                        },
                    )
                    assert success.status_code == 201, success.text
                    assert success.json["terminated"] == [task["obligation_receipt_id"]]

        await asyncio.gather(*(claimer(n) for n in range(CLAIMERS)))

        assert peak >= CLAIMERS // 2, "the claimers never actually overlapped"
        leased = [grant["task"]["task_id"] for grant in grants]
        assert len(leased) == TASKS and set(leased) == set(obligations)
        assert {grant["lease_generation"] for grant in grants} == {1}
        assert len({grant["worker"] for grant in grants}) > 1

        still_open = await apps[0].simulate_get("/v1/obligations/open", headers=headers)
        assert still_open.status_code == 200 and still_open.json == []
        anomalies = await apps[1].simulate_get(
            "/v1/receipts", headers=headers, params={"type": "system.anomaly.*"}
        )
        assert anomalies.json == []

    tenant = tenants.tenant["a"]
    async with await psycopg.AsyncConnection.connect(pg_database) as conn:
        cursor = await conn.execute(
            "SELECT count(*), count(DISTINCT task_id) FROM leases WHERE tenant = %s", [tenant]
        )
        assert await cursor.fetchone() == (TASKS, TASKS)
        cursor = await conn.execute(
            "SELECT state, obligation_open, lease_generation, count(*) FROM tasks"
            " WHERE tenant = %s GROUP BY 1, 2, 3",
            [tenant],
        )
        assert await cursor.fetchall() == [("COMPLETED", False, 1, TASKS)]


@pytest.mark.anyio
async def test_racing_retries_on_two_instances_write_once_and_replay(
    pg_database: str, tenants: Tenants
) -> None:
    headers = auth(tenants)
    async with instances(2, pg_database, tenants) as apps:
        body = {"type": "charge", "idempotency_key": f"order-{uuid.uuid4()}", "payload": {"n": 1}}
        created = await asyncio.gather(
            *(apps[n % 2].simulate_post("/v1/tasks", headers=headers, json=body) for n in range(12))
        )
        assert sorted(result.status_code for result in created) == [200] * 11 + [201]
        assert len({result.json["task_id"] for result in created}) == 1
        task = created[0].json

        receipt = {
            "type": "task.failure",
            "task_id": task["task_id"],
            "receipt_id": str(uuid.uuid4()),
            "parent_receipt_ids": [task["obligation_receipt_id"]],
        }
        written = await asyncio.gather(
            *(
                apps[n % 2].simulate_post("/v1/receipts", headers=headers, json=receipt)
                for n in range(12)
            )
        )
        assert sorted(result.status_code for result in written) == [200] * 11 + [201]
        assert {tuple(result.json["terminated"]) for result in written} == {
            (task["obligation_receipt_id"],)
        }
        ledger = await apps[0].simulate_get(
            "/v1/receipts", headers=headers, params={"task_id": task["task_id"]}
        )
        assert [r["type"] for r in ledger.json] == ["task.assigned", "task.failure"]


@pytest.mark.anyio
async def test_crossed_receipt_batches_on_two_instances_both_commit(
    pg_database: str, tenants: Tenants
) -> None:
    """Batches naming the same tasks in opposite orders both commit, and never deadlock:
    a receipt transaction locks all its tasks at once, in task_id order."""
    headers = auth(tenants)
    before = await deadlocks_reported(pg_database)
    async with instances(2, pg_database, tenants) as apps:
        pairs = []
        for _ in range(16):
            created = await apps[0].simulate_post(
                "/v1/tasks/batch", headers=headers, json={"tasks": [{"type": "x"}, {"type": "x"}]}
            )
            pairs.append(created.json["tasks"])

        def batch(tasks: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "receipts": [
                    {"type": "task.failure", "task_id": task["task_id"], "body": {"step": step}}
                    for step, task in enumerate(tasks)
                ]
            }

        results = await asyncio.gather(
            *(
                apps[side].simulate_post(
                    "/v1/receipts/batch",
                    headers=headers,
                    json=batch(pair if side == 0 else pair[::-1]),
                )
                for pair in pairs
                for side in (0, 1)
            )
        )
        assert [result.status_code for result in results] == [201] * len(results)
    # Waits up to 5 s for the statistics to show a new deadlock: there must be none.
    assert await deadlocks_reported(pg_database, before) == 0


async def deadlocks_reported(url: str, above: int = -1) -> int:
    """The database's deadlock count once it exceeds ``above`` (0 if it does not within 5 s)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(50):
            cursor = await conn.execute(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )
            (count,) = await cursor.fetchone()
            if count > above:
                return count
            # Backends publish their statistics about once a second when idle.
            await asyncio.sleep(0.1)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
    return 0


# Migrations -------------------------------------------------------------------------------


def test_two_migrate_processes_started_at_once_leave_one_schema(fresh_database: str) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("ASYNCGATE_")}
    env["ASYNCGATE_DATABASE_URL"] = fresh_database.replace("postgresql:", "postgresql+psycopg:")
    command = [str(Path(sys.executable).with_name("asyncgate")), "migrate"]
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    # Between them they applied every migration exactly once, in order.
    printed = [line for out, _ in outputs for line in out.splitlines()]
    applied = [line.removeprefix("applied ") for line in printed if line.startswith("applied ")]
    assert sorted(applied) == MIGRATIONS
    assert printed.count("schema is up to date") <= 1

    with psycopg.connect(fresh_database) as conn:
        versions = conn.execute(
            "SELECT version, count(*) FROM schema_migrations GROUP BY version"
        ).fetchall()
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    assert sorted(versions) == [(int(name[:4]), 1) for name in MIGRATIONS]
    assert [name for (name,) in tables] == ["leases", "receipts", "schema_migrations", "tasks"]


@pytest.mark.anyio
async def test_eight_concurrent_migrators_apply_each_migration_once(fresh_database: str) -> None:
    dialects = [PostgresDialect(conninfo_from_url(fresh_database), 1, 2) for _ in range(8)]
    try:
        applied = await asyncio.gather(*(dialect.migrate() for dialect in dialects))
        again = await dialects[0].migrate()
    finally:
        for dialect in dialects:
            await dialect.close()
    assert sorted(name for names in applied for name in names) == MIGRATIONS
    assert again == []


@pytest.mark.anyio
async def test_upgrading_a_populated_ledger_to_bytewise_keys_keeps_every_answer(
    fresh_database: str, tenants: Tenants
) -> None:
    """Migration 0006 changes the key columns' collation under existing rows: each tenant's
    tasks, receipts and idempotent replays answer as before, and 0003's settings stay."""
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        for name in MIGRATIONS[:5]:
            with conn.transaction():
                conn.execute((PROJECT_ROOT / "migrations" / "postgres" / name).read_bytes())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    [int(name[:4]), name],
                )

    async def answers(app: falcon.testing.ASGIConductor) -> list[Any]:
        seen = []
        for name in ("a", "b"):
            for path in ("/v1/tasks", "/v1/receipts", "/v1/obligations/open"):
                result = await app.simulate_get(path, headers=auth(tenants, name))
                assert result.status_code == 200, result.text
                seen.append(result.json)
        return seen

    async with instances(1, fresh_database, tenants, MIGRATE_ON_START="false") as [app]:
        for name in ("a", "b"):
            for key in ("first", "second"):
                created = await app.simulate_post(
                    "/v1/tasks",
                    headers=auth(tenants, name),
                    json={"type": "render", "payload": {"tenant": name}, "idempotency_key": key},
                )
                assert created.status_code == 201, created.text
            claimed = await app.simulate_post(
                "/v1/leases", headers=auth(tenants, name), json={"worker": "worker:w"}
            )
            assert claimed.status_code == 200 and len(claimed.json) == 1, claimed.text
        before = await answers(app)

    dialect = PostgresDialect(conninfo_from_url(fresh_database), 1, 2)
    try:
        # 0006, and those after it.
        assert await dialect.migrate() == MIGRATIONS[5:]
        assert MIGRATIONS[5] == "0006_text_keys_compare_bytewise.sql"
    finally:
        await dialect.close()

    async with instances(1, fresh_database, tenants, MIGRATE_ON_START="false") as [app]:
        assert await answers(app) == before
        replayed = await app.simulate_post(
            "/v1/tasks",
            headers=auth(tenants, "b"),
            json={"type": "render", "payload": {"tenant": "b"}, "idempotency_key": "first"},
        )
        assert replayed.status_code == 200, replayed.text
        assert replayed.json["task_id"] in {task["task_id"] for task in before[3]}

    with psycopg.connect(fresh_database) as conn:
        columns = conn.execute(
            "SELECT attrelid::regclass::text, attname, attcollation::regcollation::text,"
            " attstattarget FROM pg_attribute"
            " WHERE attrelid IN ('tasks'::regclass, 'receipts'::regclass, 'leases'::regclass)"
            " AND attname IN ('tenant', 'type', 'idempotency_key') ORDER BY 1, 2"
        ).fetchall()
    assert columns == [
        ("leases", "tenant", '"C"', 0),
        ("receipts", "tenant", '"C"', 0),
        ("receipts", "type", '"C"', -1),
        ("tasks", "idempotency_key", '"C"', -1),
        ("tasks", "tenant", '"C"', 0),
        ("tasks", "type", '"default"', -1),
    ]


def test_receipts_are_immutable_in_the_database(client: Any, pg_database: str) -> None:
    task = client.create_task()
    with psycopg.connect(pg_database) as conn, pytest.raises(psycopg.errors.RestrictViolation):
        conn.execute(
            "UPDATE receipts SET body = '{}' WHERE receipt_id = %s",
            [task["obligation_receipt_id"]],
        )


# Outages ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unreachable_database_answers_503_quickly(tenants: Tenants) -> None:
    url = "postgresql://postgres@127.0.0.1:1/asyncgate"
    async with instances(1, url, tenants, MIGRATE_ON_START="false") as (app,):
        started = time.monotonic()
        write = await app.simulate_post("/v1/tasks", headers=auth(tenants), json={"type": "x"})
        health = await app.simulate_get("/v1/health")
        elapsed = time.monotonic() - started
    assert write.status_code == 503
    assert write.headers["content-type"] == PROBLEM_JSON
    assert write.headers["retry-after"].isdigit()
    assert write.json["status"] == 503 and write.json["code"] == "storage_unavailable"
    assert health.status_code == 503 and health.json["status"] == "unhealthy"
    assert health.json["storage"] == {"dialect": "postgres", "reachable": False}
    assert elapsed < 3, f"an unreachable database took {elapsed:.1f}s to report"


@pytest.mark.anyio
async def test_the_pool_recovers_when_the_server_drops_its_connections(
    pg_database: str, tenants: Tenants
) -> None:
    name = f"asyncgate_drop_{uuid.uuid4().hex[:8]}"
    url = f"{pg_database}?application_name={name}"
    headers = auth(tenants)
    async with instances(1, url, tenants, DB_POOL_MIN_SIZE="2") as (app,):
        task = (await app.simulate_post("/v1/tasks", headers=headers, json={"type": "x"})).json
        # What a server restart does to every pooled connection.
        async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                [name],
            )
            assert (await cursor.fetchone())[0] >= 1
            # pg_terminate_backend only signals: wait until the backends are really gone.
            for _ in range(100):
                cursor = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [name]
                )
                if (await cursor.fetchone())[0] == 0:
                    break
                await asyncio.sleep(0.05)
        read = await app.simulate_get(f"/v1/tasks/{task['task_id']}", headers=headers)
        assert read.status_code == 200, read.text
        write = await app.simulate_post("/v1/tasks", headers=headers, json={"type": "x"})
        assert write.status_code == 201, write.text
        health = await app.simulate_get("/v1/health")
        assert health.json["status"] == "healthy"
