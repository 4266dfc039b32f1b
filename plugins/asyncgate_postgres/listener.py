"""LISTEN/NOTIFY wake-ups for long-poll claims across instances.

A notification is only a hint that a tenant may have claimable tasks: a waiting claim
re-runs its query, and still polls every second in case a hint is lost (the listener
reconnecting, or a lease expiring, which no one announces).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from asyncgate.storage import TaskSignal

CHANNEL = "asyncgate_tasks"
log = logging.getLogger("asyncgate")


class Listener:
    """One connection per process, outside the pool, opened when the first claim waits."""

    def __init__(self, conninfo: str, signal: TaskSignal) -> None:
        self.conninfo = conninfo
        self.signal = signal
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="asyncgate-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=5
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    backoff = 0.5
                    async for notification in conn.notifies():
                        self.signal.notify(notification.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("task listener reconnecting", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
