"""Rate limiting over both backends, against a real Redis (``ASYNCGATE_TEST_REDIS_URL``)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis
from asyncgate_memory import MemoryBackend
from asyncgate_redis import RedisBackend

from asyncgate.ratelimit import Verdict, gcra
from asyncgate.settings import ConfigError, Settings

REDIS_URL = os.environ.get("ASYNCGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
BACKENDS = {
    "memory": {"RATE_LIMIT_BACKEND": "memory"},
    "redis": {"RATE_LIMIT_BACKEND": "redis", "RATE_LIMIT_REDIS_URL": REDIS_URL},
}
STORE_ANOMALY = "system.anomaly.rate_limit_store_unavailable"


@pytest.fixture(params=sorted(BACKENDS))
def limited(request: pytest.FixtureRequest, make_client: Callable[..., Any]) -> Callable[..., Any]:
    """Build a rate-limited client on each backend: ``limited(calls, window=60)``."""

    def factory(calls: int, window: int = 60, **overrides: str) -> Any:
        return make_client(
            RATE_LIMIT_ACTIVE="true",
            RATE_LIMIT_DEFAULT_CALLS=str(calls),
            RATE_LIMIT_DEFAULT_WINDOW_SECONDS=str(window),
            **BACKENDS[request.param],
            **overrides,
        )

    return factory


def random_address() -> str:
    """A client address of one test alone, so per-address limits never meet another run's."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def limit_headers(result: Any) -> tuple[int, int, int]:
    headers = result.headers
    return (
        int(headers["X-RateLimit-Limit"]),
        int(headers["X-RateLimit-Remaining"]),
        int(headers["X-RateLimit-Reset"]),
    )


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# --- through the app, on both backends ---------------------------------------------


def test_exactly_the_limit_is_allowed_with_headers_counting_down(limited):
    client = limited(5)
    before = time.time()
    for expected_remaining in (4, 3, 2, 1, 0):
        result = client.get("/v1/tasks")
        assert result.status_code == 200, result.text
        limit, remaining, reset = limit_headers(result)
        assert (limit, remaining) == (5, expected_remaining)
        # Reset is epoch seconds: when the whole allowance is back, at most a window away.
        assert before < reset <= math.ceil(time.time() + 60)


def test_the_call_over_the_limit_gets_429_with_retry_after(limited):
    client = limited(3)
    for _ in range(3):
        assert client.get("/v1/tasks").status_code == 200
    refused = client.get("/v1/tasks")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json["code"] == "rate_limited"
    assert refused.json["status"] == 429
    assert limit_headers(refused)[:2] == (3, 0)
    # One call comes back every 20 s (3 per 60 s).
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert client.get("/v1/tasks").status_code == 429


def test_health_is_never_limited(limited):
    client = limited(1)
    for _ in range(5):
        result = client.get("/v1/health")
        assert result.status_code == 200
        assert "X-RateLimit-Limit" not in result.headers


def test_each_key_has_its_own_allowance(limited, tenants):
    client = limited(2)
    for _ in range(2):
        assert client.get("/v1/tasks").status_code == 200
    assert client.get("/v1/tasks").status_code == 429
    other = client.as_key(tenants.keys["b"]).get("/v1/tasks")
    assert other.status_code == 200
    assert limit_headers(other)[1] == 1


def test_bad_keys_are_limited_per_client_address(limited):
    client = limited(3)
    address, elsewhere = random_address(), random_address()
    for expected_remaining in (2, 1, 0):
        guess = client.get("/v1/tasks", key=secrets.token_urlsafe(24), remote_addr=address)
        assert guess.status_code == 401
        assert limit_headers(guess)[:2] == (3, expected_remaining)
    # Every further guess from that address is refused before the key is even judged.
    guess = client.get("/v1/tasks", key=secrets.token_urlsafe(24), remote_addr=address)
    assert guess.status_code == 429
    assert "Retry-After" in guess.headers
    no_key = {"Authorization": "Basic Z3Vlc3M6Z3Vlc3M="}
    assert client.get("/v1/tasks", headers=no_key, remote_addr=address).status_code == 429
    # Valid keys from that address, and guesses from elsewhere, are not affected.
    assert client.get("/v1/tasks", remote_addr=address).status_code == 200
    guess = client.get("/v1/tasks", key=secrets.token_urlsafe(24), remote_addr=elsewhere)
    assert guess.status_code == 401


def test_allowance_is_whole_again_after_the_window(limited):
    client = limited(2, window=2)
    for _ in range(2):
        assert client.get("/v1/tasks").status_code == 200
    refused = client.get("/v1/tasks")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) == 1
    time.sleep(2.05)
    again = client.get("/v1/tasks")
    assert again.status_code == 200
    assert limit_headers(again)[1] == 1


def test_unknown_backend_stops_startup_listing_installed_names(make_client):
    with pytest.raises(ConfigError, match=r"'nosuch' is not installed; installed: memory, redis"):
        make_client(RATE_LIMIT_ACTIVE="true", RATE_LIMIT_BACKEND="nosuch")


def test_redis_without_a_url_stops_startup(make_client):
    with pytest.raises(ConfigError, match="ASYNCGATE_RATE_LIMIT_REDIS_URL"):
        make_client(RATE_LIMIT_ACTIVE="true", RATE_LIMIT_BACKEND="redis")


def test_a_malformed_redis_url_stops_startup(make_client):
    with pytest.raises(ConfigError, match="ASYNCGATE_RATE_LIMIT_REDIS_URL"):
        make_client(
            RATE_LIMIT_ACTIVE="true", RATE_LIMIT_BACKEND="redis", RATE_LIMIT_REDIS_URL="http://x"
        )


# --- Redis shared by instances, and Redis unreachable -------------------------------


def test_two_instances_share_one_limit_through_redis(make_client):
    settings = {"RATE_LIMIT_ACTIVE": "true", "RATE_LIMIT_DEFAULT_CALLS": "4", **BACKENDS["redis"]}
    first, second = make_client(**settings), make_client(**settings)
    remaining = [
        limit_headers(instance.get("/v1/tasks"))[1] for instance in (first, second, first, second)
    ]
    assert remaining == [3, 2, 1, 0]
    assert first.get("/v1/tasks").status_code == 429
    assert second.get("/v1/tasks").status_code == 429


def unreachable(make_client: Callable[..., Any], mode: str) -> Any:
    return make_client(
        RATE_LIMIT_ACTIVE="true",
        RATE_LIMIT_BACKEND="redis",
        RATE_LIMIT_REDIS_URL=DEAD_REDIS_URL,
        RATE_LIMIT_FAILURE_MODE=mode,
    )


def test_unreachable_store_fails_open_quickly_and_is_counted(make_client):
    client = unreachable(make_client, "open")
    started = time.perf_counter()
    for _ in range(20):
        result = client.get("/v1/tasks")
        assert result.status_code == 200
        assert "X-RateLimit-Limit" not in result.headers
    assert time.perf_counter() - started < 2.0
    text = client.get("/v1/metrics").text
    assert metric(text, "asyncgate_rate_limit_store_errors_total") == 21
    # Every failure is counted; the anomaly is sent at most once a second.
    assert 1 <= metric(text, f'asyncgate_anomalies_total{{type="{STORE_ANOMALY}"}}') < 21


def test_unreachable_store_fails_closed_with_503_when_configured(make_client):
    client = unreachable(make_client, "closed")
    started = time.perf_counter()
    refused = client.get("/v1/tasks")
    assert time.perf_counter() - started < 1.0
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json["code"] == "rate_limit_unavailable"
    assert refused.headers["Retry-After"] == "1"
    assert client.get("/v1/health").status_code == 200
    assert client.get("/v1/metrics").status_code == 503


def test_a_store_that_never_answers_costs_one_timeout_not_one_per_request(make_client):
    # The kernel accepts connections on a listening socket nobody reads: Redis hangs.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        client = make_client(
            RATE_LIMIT_ACTIVE="true",
            RATE_LIMIT_BACKEND="redis",
            RATE_LIMIT_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            RATE_LIMIT_REDIS_TIMEOUT_SECONDS="0.2",
        )
        started = time.perf_counter()
        for _ in range(10):
            assert client.get("/v1/tasks").status_code == 200
        # One read timeout (no retries), then the backend's cooldown answers at once:
        # well under the 2 s that ten timeouts would take.
        assert time.perf_counter() - started < 1.5


# --- the backends themselves, on a pinned clock ---------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"asyncgate:rltest:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def redis_backend(prefix: str, clock: Callable[[], float] | None = None) -> RedisBackend:
    return RedisBackend(REDIS_URL, 0.5, prefix=prefix, clock=clock)


@pytest.mark.anyio
async def test_both_backends_give_identical_verdict_sequences(prefix):
    clock = Clock()
    memory, shared = MemoryBackend(clock=clock), redis_backend(prefix, clock)
    steps = random.Random(4)
    verdicts: list[tuple[Verdict, Verdict]] = []
    for _ in range(1500):
        clock.now += steps.choice([0.0, 0.0, 0.001, 0.1, 1 / 3, 0.5, 0.75, 2.0, 7.0])
        key = steps.choice(["k1", "k2"])
        limit, window = (3, 2) if key == "k1" else (7, 5)
        expected = await memory.hit(key, limit, window)
        verdicts.append((expected, await shared.hit(key, limit, window)))
    await shared.close()
    assert all(left == right for left, right in verdicts)
    assert {left.allowed for left, _ in verdicts} == {True, False}


@pytest.mark.anyio
@pytest.mark.parametrize("name", sorted(BACKENDS))
async def test_exact_at_the_window_edge(name, prefix):
    clock = Clock()
    backend = MemoryBackend(clock=clock) if name == "memory" else redis_backend(prefix, clock)
    # 4 calls per 2 s: a burst of 4, then one more every 0.5 s, to the microsecond.
    assert [(await backend.hit("k", 4, 2)).remaining for _ in range(4)] == [3, 2, 1, 0]
    refused = await backend.hit("k", 4, 2)
    assert not refused.allowed and refused.retry_after == 0.5
    assert refused.reset_at == clock.now + 2
    clock.now += 0.499999
    assert not (await backend.hit("k", 4, 2)).allowed
    clock.now += 0.000001
    assert (await backend.hit("k", 4, 2)).allowed
    clock.now += 2.0
    assert (await backend.hit("k", 4, 2)).remaining == 3
    await backend.close()


@pytest.mark.anyio
async def test_concurrent_calls_on_two_instances_never_exceed_the_limit(prefix):
    first, second = redis_backend(prefix), redis_backend(prefix)
    calls = [backend.hit("k", 10, 60) for backend in (first, second) for _ in range(40)]
    verdicts = await asyncio.gather(*calls)
    assert sum(verdict.allowed for verdict in verdicts) == 10
    await first.close()
    await second.close()


@pytest.mark.anyio
async def test_redis_keys_are_prefixed_and_expire_when_idle(prefix):
    backend = redis_backend(prefix)
    await backend.hit("key:abc", 10, 60)
    await backend.close()
    client = redis.Redis.from_url(REDIS_URL)
    ttl_ms = await client.pttl(prefix + "key:abc")
    await client.aclose()
    # The allowance is whole again one interval (6 s) after a single call.
    assert 0 < ttl_ms <= 6000


@pytest.mark.anyio
async def test_the_script_is_reloaded_after_redis_forgets_it(prefix):
    backend = redis_backend(prefix)
    await backend.hit("k", 10, 60)
    # As after a Redis restart, EVALSHA meets NOSCRIPT; SCRIPT FLUSH would hit other users.
    backend._script.sha = "0" * 40
    assert (await backend.hit("k", 10, 60)).remaining == 8
    await backend.close()


def test_gcra_spreads_the_limit_over_the_window():
    verdict, tat = gcra(tat=100.0, now=100.0, limit=10, window=60)
    assert verdict == Verdict(True, 10, 9, 106.0, 0.0) and tat == 106.0
    verdict, tat = gcra(tat=160.0, now=100.0, limit=10, window=60)
    assert not verdict.allowed and tat is None and verdict.retry_after == 6.0


def test_limiting_is_on_by_default_except_in_development():
    production = Settings.from_env({"ASYNCGATE_API_KEY": "k"})
    development = Settings.from_env(
        {"ASYNCGATE_ENV": "development", "ASYNCGATE_ALLOW_INSECURE_DEV": "true"}
    )
    assert production.rate_limit_active and not development.rate_limit_active
    assert production.rate_limit_failure_mode == "open"
