"""Long-poll claims: woken by new work (across instances on PostgreSQL), never holding a pool
connection while they wait, and answering [] at the deadline."""

from __future__ import annotations

import asyncio
import time

import falcon.testing
import pytest
from conftest import app_settings

from asyncgate.app import create_app


def headers(tenants) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenants.keys['a']}"}


def test_a_waiting_claim_wakes_when_a_task_is_created(database_url, tenants):
    """Two app instances on one database: the task is created through the other one."""

    async def scenario() -> tuple[float, list]:
        waiter_app = create_app(app_settings(database_url, tenants))
        creator_app = create_app(app_settings(database_url, tenants))
        async with (
            falcon.testing.ASGIConductor(waiter_app) as waiter,
            falcon.testing.ASGIConductor(creator_app) as creator,
        ):
            claim = asyncio.create_task(
                waiter.simulate_post(
                    "/v1/leases",
                    headers=headers(tenants),
                    json={"worker": "worker:w", "wait_seconds": 10},
                )
            )
            await asyncio.sleep(1.5)  # the claim is waiting (and its listener is up)
            assert not claim.done()
            created_at = time.monotonic()
            await creator.simulate_post("/v1/tasks", headers=headers(tenants), json={"type": "x"})
            result = await claim
            return time.monotonic() - created_at, result.json

    latency, granted = asyncio.run(scenario())
    assert len(granted) == 1
    # The polling fallback would take up to a second; a wake-up takes milliseconds.
    assert latency < 0.5, f"woke after {latency:.3f} s"


def test_many_waiters_do_not_exhaust_the_pool(database_url, tenants):
    async def scenario() -> tuple[list[int], float, int]:
        app = create_app(app_settings(database_url, tenants, DB_POOL_MAX_SIZE="2"))
        async with falcon.testing.ASGIConductor(app) as conductor:
            waiters = [
                asyncio.create_task(
                    conductor.simulate_post(
                        "/v1/leases",
                        headers=headers(tenants),
                        json={"worker": f"worker:w{i}", "types": ["never"], "wait_seconds": 2},
                    )
                )
                for i in range(40)
            ]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            other = await conductor.simulate_post(
                "/v1/tasks", headers=headers(tenants), json={"type": "x"}
            )
            other_latency = time.monotonic() - started
            results = await asyncio.gather(*waiters)
            return [r.status_code for r in results], other_latency, other.status_code

    statuses, other_latency, other_status = asyncio.run(scenario())
    assert statuses == [200] * 40
    assert other_status == 201
    assert other_latency < 1.0, f"a request waited {other_latency:.2f} s beside the long polls"


@pytest.mark.parametrize("wait", [1])
def test_long_poll_times_out_with_an_empty_array(client, wait):
    started = time.monotonic()
    result = client.post("/v1/leases", json={"worker": "worker:w", "wait_seconds": wait})
    assert result.status_code == 200 and result.json == []
    assert time.monotonic() - started >= wait * 0.9
