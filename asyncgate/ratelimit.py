"""Rate limiting: the backend interface and the middleware that applies it.

Backends (``memory``, ``redis``, or a third party's) are plugins. Each answers one
question atomically: may this key make one more call now? The middleware turns the
answer into ``X-RateLimit-*`` headers, a 429, or, when the store is unreachable,
the configured fail-open or fail-closed behaviour.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import falcon

from asyncgate.errors import Problem
from asyncgate.metrics import Metrics
from asyncgate.settings import Settings

log = logging.getLogger("asyncgate.ratelimit")
EXEMPT_PATHS = frozenset({"/v1/health"})
# In an outage every request fails; log and emit the anomaly at most this often (each
# failure is still counted) so a webhook emitter is not flooded at the request rate.
ANOMALY_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the allowance is whole again
    retry_after: float  # seconds until one more call is allowed; 0 when allowed


class RateLimitStoreUnavailable(Exception):
    """The backend's store could not answer in time."""


class RateLimitBackend(Protocol):
    name: str

    async def hit(self, key: str, limit: int, window_seconds: int) -> Verdict:
        """Count one call for ``key`` and say whether it is allowed. Must be atomic."""
        ...

    async def close(self) -> None: ...


def gcra(tat: float, now: float, limit: int, window: float) -> tuple[Verdict, float | None]:
    """Generic cell rate algorithm: returns the verdict and the new theoretical arrival time.

    ``limit`` calls fit in any ``window``, spread or in a burst, exactly at the edges.
    The new TAT is ``None`` when the call is refused (nothing is stored).
    """
    interval = window / limit
    new_tat = max(tat, now) + interval
    allow_at = new_tat - window
    if allow_at > now:
        return Verdict(False, limit, 0, max(tat, now), allow_at - now), None
    remaining = int((window - (new_tat - now)) / interval + 1e-9)
    return Verdict(True, limit, remaining, new_tat, 0.0), new_tat


class RateLimitMiddleware:
    def __init__(
        self,
        backend: RateLimitBackend,
        settings: Settings,
        metrics: Metrics,
        report_anomaly: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.backend = backend
        self.limit = settings.rate_limit_default_calls
        self.window = settings.rate_limit_default_window_seconds
        self.fail_closed = settings.rate_limit_failure_mode == "closed"
        self.metrics = metrics
        self.report_anomaly = report_anomaly
        self._last_report = -math.inf
        self._unreported = 0

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.rate_verdict = None
        if req.path in EXEMPT_PATHS:
            return
        if req.context.identity is not None and req.context.key_digest is not None:
            key = f"key:{req.context.key_digest}"
        elif req.context.identity is not None:
            key = "dev"
        else:
            # Failed authentication is limited per client address: keys cannot be brute-forced.
            key = f"addr:{req.remote_addr}"
        try:
            verdict = await self.backend.hit(key, self.limit, self.window)
        except RateLimitStoreUnavailable as exc:
            await self._store_failed(exc)
            return
        req.context.rate_verdict = verdict
        if not verdict.allowed:
            self.metrics.rate_limited.inc()
            raise Problem(
                429,
                "rate_limited",
                f"more than {verdict.limit} calls in {self.window} s; retry after "
                f"{math.ceil(verdict.retry_after)} s",
                headers={"Retry-After": str(max(1, math.ceil(verdict.retry_after)))},
            )

    async def _store_failed(self, exc: Exception) -> None:
        self.metrics.rate_limit_store_errors.inc()
        mode = "closed" if self.fail_closed else "open"
        now = time.monotonic()
        if now - self._last_report < ANOMALY_INTERVAL_SECONDS:
            self._unreported += 1
        else:
            self._last_report, unreported, self._unreported = now, self._unreported, 0
            log.error(
                "rate-limit store unavailable, failing %s (%d earlier failures unreported): %s",
                mode,
                unreported,
                exc,
            )
            await self.report_anomaly(
                {
                    "type": "system.anomaly.rate_limit_store_unavailable",
                    "body": {
                        "backend": self.backend.name,
                        "failure_mode": mode,
                        "error": str(exc),
                        "unreported_failures": unreported,
                    },
                }
            )
        if self.fail_closed:
            raise Problem(
                503,
                "rate_limit_unavailable",
                "the rate-limit store is unreachable and the service fails closed; retry later",
                headers={"Retry-After": "1"},
            )

    async def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        verdict: Verdict | None = getattr(req.context, "rate_verdict", None)
        if verdict is None:
            return
        resp.set_header("X-RateLimit-Limit", str(verdict.limit))
        resp.set_header("X-RateLimit-Remaining", str(verdict.remaining))
        resp.set_header("X-RateLimit-Reset", str(math.ceil(verdict.reset_at)))
