"""Shared fixtures. Every behavioural test runs against both dialects through ``client``.

Tests are isolated by tenant: each test gets fresh random keys for tenants of its own,
so one PostgreSQL database (created once per session) serves the whole run.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import psycopg
import pytest
from falcon.util.sync import async_to_sync

from asyncgate.app import create_app
from asyncgate.settings import Settings, hash_key

PG_ADMIN_URL = os.environ.get(
    "ASYNCGATE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DIALECTS = ["sqlite", "postgres"]


def pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


def create_pg_database(prefix: str = "asyncgate_test") -> str:
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def create_migrated_pg_database(prefix: str) -> tuple[str, str]:
    """A fresh database with AsyncGate's schema: (name, url)."""
    from asyncgate_postgres import PostgresDialect, conninfo_from_url

    name = create_pg_database(prefix)
    url = pg_url(name)

    async def migrate() -> None:
        dialect = PostgresDialect(conninfo_from_url(url), 1, 1)
        await dialect.migrate()
        await dialect.close()

    asyncio.run(migrate())
    return name, url


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """One PostgreSQL database for the session's tenant-isolated tests."""
    name = create_pg_database()
    yield pg_url(name)
    drop_pg_database(name)


@pytest.fixture(params=DIALECTS)
def private_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of this test alone, for checks that look across every tenant."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'private.db'}"
        return
    name = create_pg_database("asyncgate_private")
    yield pg_url(name)
    drop_pg_database(name)


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'asyncgate.db'}"
    return request.getfixturevalue("pg_database")


class Client:
    """Synchronous face of Falcon's ASGIConductor: one app lifespan, one event loop."""

    def __init__(self, conductor: falcon.testing.ASGIConductor, key: str) -> None:
        self.conductor = conductor
        self.key = key

    def request(
        self, method: str, path: str, *, key: str | None = None, auth: bool = True, **kwargs: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {key or self.key}"} if auth else {}
        headers.update(kwargs.pop("headers", {}))
        return async_to_sync(
            self.conductor.simulate_request, method, path, headers=headers, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def as_key(self, key: str) -> Client:
        return Client(self.conductor, key)

    # Shortcuts for the life cycle, asserting each step succeeded.
    def create_task(self, **fields: Any) -> dict[str, Any]:
        result = self.post("/v1/tasks", json={"type": "demo", **fields})
        assert result.status_code == 201, result.text
        return result.json

    def claim(self, worker: str = "worker:w1", **fields: Any) -> list[dict[str, Any]]:
        result = self.post("/v1/leases", json={"worker": worker, **fields})
        assert result.status_code == 200, result.text
        return result.json

    def receipt(self, **fields: Any) -> Any:
        return self.post("/v1/receipts", json=fields)


class Tenants:
    """Random keys for three tenants of this test alone; principal is service:<tenant>.

    ``delegate`` is a second principal (agent:delegate) inside tenant ``a``.
    """

    def __init__(self, directory: Path) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.keys = {name: secrets.token_urlsafe(24) for name in ("a", "b", "c", "delegate")}
        self.tenant = {name: f"{name}-{suffix}" for name in ("a", "b", "c")}
        self.tenant["delegate"] = self.tenant["a"]
        self.principal = {name: f"service:{name}" for name in ("a", "b", "c")}
        self.principal["delegate"] = "agent:delegate"
        self.path = directory / "keys.txt"
        lines = [
            f"{hash_key(key)} {self.tenant[name]} {self.principal[name]}"
            for name, key in self.keys.items()
        ]
        self.path.write_text("# test keys\n" + "\n".join(lines) + "\n")


@pytest.fixture
def tenants(tmp_path: Path) -> Tenants:
    return Tenants(tmp_path)


def app_settings(database_url: str, tenants: Tenants, **overrides: str) -> Settings:
    """Settings for a test app: the tenants' keys file, no rate limit unless asked for."""
    env = {
        "ASYNCGATE_ENV": "test",
        "ASYNCGATE_DATABASE_URL": database_url,
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
        **{f"ASYNCGATE_{name}": value for name, value in overrides.items()},
    }
    return Settings.from_env(env)


def follow_pages(client: Client, url: str) -> list[dict[str, Any]]:
    """Every item of a listing, following its Link rel="next" until it ends."""
    items: list[dict[str, Any]] = []
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        items += page.json
        link = page.headers.get("link")
        if link:
            assert link.endswith('rel="next"')
        url = link[1 : link.index(">")] if link else None
    return items


AppFactory = Callable[..., Client]


@pytest.fixture
def make_client(database_url: str, tenants: Tenants) -> Iterator[AppFactory]:
    """Build a client for an app with extra ASYNCGATE_* settings (``RATE_LIMIT_ACTIVE="true"``)."""
    opened: list[falcon.testing.ASGIConductor] = []

    def factory(**overrides: str) -> Client:
        app = create_app(app_settings(database_url, tenants, **overrides))
        conductor = falcon.testing.ASGIConductor(app)
        async_to_sync(conductor.__aenter__)
        opened.append(conductor)
        return Client(conductor, tenants.keys["a"])

    yield factory
    for conductor in reversed(opened):
        async_to_sync(conductor.__aexit__, None, None, None)


@pytest.fixture
def client(make_client: AppFactory) -> Client:
    return make_client()
