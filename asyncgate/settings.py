"""Configuration: every ``ASYNCGATE_*`` variable, read once into a frozen dataclass.

Every bad value is refused here, at startup, with a one-line reason (``ConfigError``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PRINCIPAL_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}:[!-~]{1,200}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}$")

DEFAULT_DATABASE_URL = "sqlite:///./asyncgate.db"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line that says what to do."""


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    principal: str


@dataclass(frozen=True)
class Settings:
    env: str = "production"
    database_url: str = DEFAULT_DATABASE_URL
    api_key: str | None = None
    api_keys_file: str | None = None
    allow_insecure_dev: bool = False
    lease_default_ttl_seconds: int = 300
    max_body_bytes: int = 1024 * 1024
    receipt_retention_days: int = 30
    rate_limit_active: bool = True
    rate_limit_backend: str = "memory"
    rate_limit_redis_url: str | None = None
    rate_limit_default_calls: int = 100
    rate_limit_default_window_seconds: int = 60
    rate_limit_failure_mode: str = "open"
    rate_limit_redis_timeout_seconds: float = 0.25
    anomaly_emitters: frozenset[str] = frozenset({"log"})
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_timeout_seconds: float = 2.0
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10
    db_generic_plans: bool = True
    log_level: str = "INFO"
    migrate_on_start: bool = True
    # sha256 hex of a key -> who it authenticates
    keys: Mapping[str, Identity] = field(default_factory=dict)

    @property
    def insecure_dev(self) -> bool:
        return self.allow_insecure_dev and self.env == "development"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, require_keys: bool = True
    ) -> Settings:
        """Read every setting. ``require_keys=False`` serves commands that answer no requests."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        app_env = reader.choice("ENV", "production", {"production", "development", "test"})
        allow_insecure = reader.boolean("ALLOW_INSECURE_DEV", False)
        if allow_insecure and app_env != "development":
            raise ConfigError(
                "ASYNCGATE_ALLOW_INSECURE_DEV=true is refused unless ASYNCGATE_ENV=development"
            )
        api_key = env.get("ASYNCGATE_API_KEY") or None
        keys_file = env.get("ASYNCGATE_API_KEYS_FILE") or None
        keys = load_keys(api_key, keys_file)
        if require_keys and not keys and not allow_insecure:
            raise ConfigError(
                "no API key source: set ASYNCGATE_API_KEY or ASYNCGATE_API_KEYS_FILE "
                "(or, in development only, ASYNCGATE_ALLOW_INSECURE_DEV=true)"
            )
        redis_url = env.get("ASYNCGATE_RATE_LIMIT_REDIS_URL") or env.get("ASYNCGATE_REDIS_URL")
        settings = cls(
            env=app_env,
            database_url=env.get("ASYNCGATE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            api_key=api_key,
            api_keys_file=keys_file,
            allow_insecure_dev=allow_insecure,
            lease_default_ttl_seconds=reader.integer("LEASE_DEFAULT_TTL_SECONDS", 300, 1, 3600),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", 1024 * 1024, 1024, 1 << 30),
            receipt_retention_days=reader.integer("RECEIPT_RETENTION_DAYS", 30, 1, 36500),
            rate_limit_active=reader.boolean("RATE_LIMIT_ACTIVE", app_env != "development"),
            rate_limit_backend=reader.name("RATE_LIMIT_BACKEND", "memory"),
            rate_limit_redis_url=redis_url or None,
            rate_limit_default_calls=reader.integer("RATE_LIMIT_DEFAULT_CALLS", 100, 1, 10**9),
            rate_limit_default_window_seconds=reader.integer(
                "RATE_LIMIT_DEFAULT_WINDOW_SECONDS", 60, 1, 86400
            ),
            rate_limit_failure_mode=reader.choice(
                "RATE_LIMIT_FAILURE_MODE", "open", {"open", "closed"}
            ),
            rate_limit_redis_timeout_seconds=reader.number(
                "RATE_LIMIT_REDIS_TIMEOUT_SECONDS", 0.25, 0.01, 10.0
            ),
            anomaly_emitters=reader.names("ANOMALY_EMITTERS", "log"),
            webhook_url=env.get("ASYNCGATE_WEBHOOK_URL") or None,
            webhook_secret=env.get("ASYNCGATE_WEBHOOK_SECRET") or None,
            webhook_timeout_seconds=reader.number("WEBHOOK_TIMEOUT_SECONDS", 2.0, 0.1, 60.0),
            db_pool_min_size=reader.integer("DB_POOL_MIN_SIZE", 1, 0, 1000),
            db_pool_max_size=reader.integer("DB_POOL_MAX_SIZE", 10, 1, 1000),
            db_generic_plans=reader.boolean("DB_GENERIC_PLANS", True),
            log_level=reader.choice(
                "LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"}, upper=True
            ),
            migrate_on_start=reader.boolean("MIGRATE_ON_START", True),
            keys=keys,
        )
        if settings.db_pool_min_size > settings.db_pool_max_size:
            raise ConfigError(
                "ASYNCGATE_DB_POOL_MIN_SIZE must not exceed ASYNCGATE_DB_POOL_MAX_SIZE"
            )
        return settings


def hash_key(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def load_keys(api_key: str | None, keys_file: str | None) -> dict[str, Identity]:
    keys: dict[str, Identity] = {}
    if api_key:
        keys[hash_key(api_key)] = Identity("default", "service:default")
    if keys_file:
        keys.update(parse_keys_file(Path(keys_file)))
    return keys


def parse_keys_file(path: Path) -> dict[str, Identity]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"ASYNCGATE_API_KEYS_FILE {path}: cannot read ({exc.strerror})") from exc
    keys: dict[str, Identity] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"ASYNCGATE_API_KEYS_FILE {path} line {number}"
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected '<sha256 hex> <tenant> <principal>'")
        digest, tenant, principal = parts
        if not KEY_HASH_RE.match(digest):
            raise ConfigError(
                f"{where}: the first field must be the lower-case sha256 hex of a key "
                "(use 'asyncgate keys mint'), never the key itself"
            )
        if not TENANT_RE.match(tenant):
            raise ConfigError(f"{where}: tenant must match {TENANT_RE.pattern}")
        if not PRINCIPAL_RE.match(principal):
            raise ConfigError(f"{where}: principal must be kind:id, e.g. service:billing")
        keys[digest] = Identity(tenant, principal)
    return keys


class _Reader:
    """Parses one ``ASYNCGATE_<NAME>`` variable, naming it in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(f"ASYNCGATE_{name}")
        return value.strip() if value is not None and value.strip() else None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"ASYNCGATE_{name}={raw!r}: expected true or false")

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"ASYNCGATE_{name}={raw!r}: expected an integer") from None
        if not low <= value <= high:
            raise ConfigError(f"ASYNCGATE_{name}={value}: expected {low} to {high}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"ASYNCGATE_{name}={raw!r}: expected a number") from None
        if not low <= value <= high:
            raise ConfigError(f"ASYNCGATE_{name}={value}: expected {low} to {high}")
        return value

    def choice(self, name: str, default: str, allowed: set[str], upper: bool = False) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(
                f"ASYNCGATE_{name}={raw!r}: expected one of {', '.join(sorted(allowed))}"
            )
        return value

    def name(self, name: str, default: str) -> str:
        return (self._raw(name) or default).lower()

    def names(self, name: str, default: str) -> frozenset[str]:
        raw = self._raw(name)
        raw = default if raw is None else raw
        return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())
