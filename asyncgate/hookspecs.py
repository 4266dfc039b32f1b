"""Every hook AsyncGate calls. Plugins implement them with ``asyncgate.hookimpl``.

Built-in plugins (SQLite, PostgreSQL, memory and Redis rate limits, log and webhook
emitters) register through the ``asyncgate`` entry-point group exactly like
third-party ones, so nothing here favours them.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from asyncgate.ratelimit import RateLimitBackend
    from asyncgate.settings import Settings
    from asyncgate.storage import Dialect

hookspec = pluggy.HookspecMarker("asyncgate")


@hookspec
def asyncgate_dialect_names() -> list[str]:
    """Return the URL schemes this plugin serves (``["sqlite"]``).

    Used only to list installed dialects when a URL names an unknown one.
    """


@hookspec(firstresult=True)
def asyncgate_dialect(scheme: str, url: str, settings: Settings) -> Dialect | None:
    """Return a storage dialect for a database URL, or ``None`` if ``scheme`` is not yours.

    ``scheme`` is the URL's scheme lower-cased (``postgresql+psycopg``). The returned
    object is not yet connected; AsyncGate calls ``await dialect.open()`` at startup.
    """


@hookspec
def asyncgate_ratelimit_backend_names() -> list[str]:
    """Return the rate-limit backend names this plugin provides (``["memory"]``)."""


@hookspec(firstresult=True)
def asyncgate_ratelimit_backend(name: str, settings: Settings) -> RateLimitBackend | None:
    """Return the rate-limit backend called ``name``, or ``None`` if it is not yours.

    The backend must be atomic for concurrent requests of one key.
    """


@hookspec
def asyncgate_emitter_names() -> list[str]:
    """Return the anomaly emitter names this plugin provides (``["log"]``)."""


@hookspec
def asyncgate_emit_anomaly(
    anomaly: dict[str, Any], tenant: str, settings: Settings
) -> Awaitable[None] | None:
    """Deliver one anomaly after the transaction that recorded it committed.

    ``anomaly`` is a stored ``system.anomaly.*`` receipt, or for events outside the
    ledger (a rate-limit store that is unreachable) a dict with ``type`` and ``body``.
    Every plugin is called; each acts only if its name is in
    ``settings.anomaly_emitters`` and returns a coroutine (or ``None`` to skip).
    The coroutine runs in the background: if it raises, AsyncGate logs the failure and
    counts it in ``asyncgate_emitter_failures_total{emitter=<plugin>}``; the client whose
    request caused the anomaly never sees it.
    """


@hookspec
def asyncgate_check_settings(settings: Settings) -> None:
    """Refuse settings this plugin cannot work with by raising ``ConfigError``, at startup.

    Called once per app; for example the webhook emitter requires a URL when enabled.
    """
