"""The ``memory`` rate-limit backend: GCRA state in this process only (one instance)."""

from __future__ import annotations

import time

from asyncgate import hookimpl
from asyncgate.ratelimit import Verdict, gcra
from asyncgate.settings import Settings

NAME = "memory"


class MemoryBackend:
    name = NAME

    def __init__(self, clock=time.time) -> None:
        self._tat: dict[str, float] = {}
        self._clock = clock

    async def hit(self, key: str, limit: int, window_seconds: int) -> Verdict:
        # No await between read and write: atomic under asyncio's single thread.
        now = self._clock()
        verdict, new_tat = gcra(self._tat.get(key, now), now, limit, window_seconds)
        if new_tat is not None:
            self._tat[key] = new_tat
            if len(self._tat) > 100_000:
                self._forget_idle(now)
        return verdict

    def _forget_idle(self, now: float) -> None:
        for key in [key for key, tat in self._tat.items() if tat <= now]:
            del self._tat[key]

    async def close(self) -> None:
        self._tat.clear()


@hookimpl
def asyncgate_ratelimit_backend_names() -> list[str]:
    return [NAME]


@hookimpl
def asyncgate_ratelimit_backend(name: str, settings: Settings) -> MemoryBackend | None:
    return MemoryBackend() if name == NAME else None
