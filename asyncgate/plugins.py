"""The single plugin manager, and backends chosen by name from configuration.

Built-in plugins are not special: they are found through the ``asyncgate``
entry-point group like any third-party plugin, and the core never imports them.
"""

from __future__ import annotations

import itertools
from functools import cache

import pluggy

from asyncgate import hookspecs
from asyncgate.ratelimit import RateLimitBackend
from asyncgate.settings import ConfigError, Settings
from asyncgate.storage import Dialect

ENTRY_POINT_GROUP = "asyncgate"


@cache
def plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("asyncgate")
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    # A misspelt hook implementation fails here instead of silently doing nothing.
    manager.check_pending()
    return manager


def _installed(names: list[list[str]]) -> str:
    return ", ".join(sorted(set(itertools.chain.from_iterable(names)))) or "none"


def dialect_for(settings: Settings) -> Dialect:
    url = settings.database_url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    hook = plugin_manager().hook
    try:
        dialect = hook.asyncgate_dialect(scheme=scheme, url=url, settings=settings)
    except ValueError as exc:
        raise ConfigError(f"ASYNCGATE_DATABASE_URL: {exc}") from exc
    if dialect is None:
        raise ConfigError(
            f"ASYNCGATE_DATABASE_URL scheme {scheme!r} has no installed dialect; "
            f"installed: {_installed(hook.asyncgate_dialect_names())}"
        )
    return dialect


def rate_limiter_for(settings: Settings) -> RateLimitBackend:
    hook = plugin_manager().hook
    backend = hook.asyncgate_ratelimit_backend(name=settings.rate_limit_backend, settings=settings)
    if backend is None:
        raise ConfigError(
            f"ASYNCGATE_RATE_LIMIT_BACKEND={settings.rate_limit_backend!r} is not installed; "
            f"installed: {_installed(hook.asyncgate_ratelimit_backend_names())}"
        )
    return backend


def check_emitters(settings: Settings) -> None:
    """Every enabled emitter is installed, and every plugin accepts the settings."""
    plugin_manager().hook.asyncgate_check_settings(settings=settings)
    installed = set(itertools.chain.from_iterable(plugin_manager().hook.asyncgate_emitter_names()))
    unknown = sorted(settings.anomaly_emitters - installed)
    if unknown:
        raise ConfigError(
            f"ASYNCGATE_ANOMALY_EMITTERS names {', '.join(unknown)}, which is not installed; "
            f"installed: {', '.join(sorted(installed)) or 'none'}"
        )
