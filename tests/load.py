"""A small load generator for the fault tests: threads calling a real server, every answer kept.

Each call is recorded with its timing, status and the headers the tests judge, or the
transport error that replaced it; nothing is retried, so the record is what clients saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

# A request that takes longer than this has hung as far as any client is concerned.
CLIENT_TIMEOUT = 5.0


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: a transport error (timeout, refused, reset)
    error: str | None = None
    retry_after: str | None = None
    content_type: str | None = None
    rate_limited_headers: bool = False
    body: bytes = b""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """``threads`` workers each calling ``step(http, outcomes, n)`` until ``stop()``."""

    base_url: str
    key: str
    step: Callable[[Load, httpx.Client, int, int], None]
    threads: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, http: httpx.Client, method: str, path: str, **kwargs: object) -> Outcome:
        started = time.monotonic()
        try:
            response = http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            outcome = Outcome(started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
        else:
            outcome = Outcome(
                started,
                time.monotonic(),
                response.status_code,
                retry_after=response.headers.get("retry-after"),
                content_type=response.headers.get("content-type"),
                rate_limited_headers="x-ratelimit-limit" in response.headers,
                body=response.content,
            )
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def _run(self, worker: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=CLIENT_TIMEOUT) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                self.step(self, http, worker, n)

    def start(self) -> Load:
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(CLIENT_TIMEOUT * 3)

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= start and o.ended <= end]

    def after(self, start: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= start]
