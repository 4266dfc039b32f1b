"""The ``redis`` rate-limit backend: GCRA state shared by every instance through Redis.

One Lua script decides and stores in a single round trip, so concurrent requests of
one key (on any instance) cannot race, and it reads Redis ``TIME`` so every instance
shares one clock. The script only decides and stores the theoretical arrival time
(TAT); the verdict is built by ``asyncgate.ratelimit.gcra`` from the same inputs, so
the algorithm's semantics are defined once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from asyncgate import hookimpl
from asyncgate.ratelimit import RateLimitStoreUnavailable, Verdict, gcra
from asyncgate.settings import ConfigError, Settings

NAME = "redis"
KEY_PREFIX = "asyncgate:rl:"
# After a failure, answer "unavailable" at once for this long instead of letting every
# request wait out a timeout against a store that is down.
COOLDOWN_SECONDS = 1.0

# KEYS[1]: the key's TAT (epoch seconds). ARGV: limit, window seconds, and optionally
# `now` (tests pin the clock; otherwise Redis TIME). The arithmetic mirrors gcra() step
# by step in IEEE doubles; %.17g makes every number round-trip exactly.
GCRA_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local interval = window / limit
local new_tat = math.max(tat, now) + interval
if new_tat - window <= now then
  local ttl_ms = math.max(1, math.ceil((new_tat - now) * 1000))
  redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', ttl_ms)
end
return {string.format('%.17g', tat), string.format('%.17g', now)}
"""


class RedisBackend:
    name = NAME

    def __init__(
        self,
        url: str,
        timeout_seconds: float,
        *,
        prefix: str = KEY_PREFIX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # No retries: a request must never wait longer than one timeout for the limiter.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
        )
        # EVALSHA, loading the script on NOSCRIPT (after a Redis restart or failover).
        self._script = self._client.register_script(GCRA_LUA)
        self._prefix = prefix
        # None in service: the script reads Redis TIME. Tests and benches may pin the clock.
        self._clock = clock
        self._down_until = 0.0

    async def hit(self, key: str, limit: int, window_seconds: int) -> Verdict:
        if time.monotonic() < self._down_until:
            raise RateLimitStoreUnavailable("redis: unavailable after a recent failure")
        args: list[int | str] = [limit, window_seconds]
        if self._clock is not None:
            args.append(repr(self._clock()))
        try:
            tat, now = await self._script(keys=[self._prefix + key], args=args)
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + COOLDOWN_SECONDS
            # The server may have gone: idle pooled connections to it are stale, and each
            # would fail once (and restart the cooldown) after it returns. Drop them now.
            await self._client.connection_pool.disconnect(inuse_connections=False)
            raise RateLimitStoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        verdict, _ = gcra(float(tat), float(now), limit, window_seconds)
        return verdict

    async def close(self) -> None:
        await self._client.aclose()


@hookimpl
def asyncgate_ratelimit_backend_names() -> list[str]:
    return [NAME]


@hookimpl
def asyncgate_ratelimit_backend(name: str, settings: Settings) -> RedisBackend | None:
    if name != NAME:
        return None
    url = settings.rate_limit_redis_url
    if not url:
        raise ConfigError(
            "ASYNCGATE_RATE_LIMIT_BACKEND=redis needs ASYNCGATE_RATE_LIMIT_REDIS_URL "
            "(or ASYNCGATE_REDIS_URL), e.g. redis://127.0.0.1:6379/0"
        )
    try:
        return RedisBackend(url, settings.rate_limit_redis_timeout_seconds)
    except ValueError as exc:
        raise ConfigError(f"ASYNCGATE_RATE_LIMIT_REDIS_URL: {exc}") from exc
