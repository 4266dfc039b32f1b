"""The ``webhook`` anomaly emitter: POSTs each anomaly as JSON to ``ASYNCGATE_WEBHOOK_URL``.

With ``ASYNCGATE_WEBHOOK_SECRET`` set, the body is signed with HMAC-SHA256 in
``X-AsyncGate-Signature: sha256=<hex>`` so the receiver can check who sent it.
Delivery is at most once: AsyncGate never retries (the ledger keeps every anomaly).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx
import orjson

from asyncgate import hookimpl
from asyncgate.settings import ConfigError, Settings

NAME = "webhook"


class WebhookError(Exception):
    """The receiver did not accept the anomaly."""


_clients: dict[float, httpx.AsyncClient] = {}


def _client(timeout: float) -> httpx.AsyncClient:
    # One pooled client per timeout, reused across deliveries.
    client = _clients.get(timeout)
    if client is None or client.is_closed:
        client = _clients[timeout] = httpx.AsyncClient(timeout=timeout)
    return client


async def deliver(anomaly: dict[str, Any], tenant: str, settings: Settings) -> None:
    assert settings.webhook_url is not None
    body = orjson.dumps({"tenant": tenant, "anomaly": anomaly}, option=orjson.OPT_UTC_Z)
    headers = {"Content-Type": "application/json", "User-Agent": "asyncgate-webhook"}
    if settings.webhook_secret:
        digest = hmac.new(settings.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-AsyncGate-Signature"] = f"sha256={digest}"
    try:
        response = await _client(settings.webhook_timeout_seconds).post(
            settings.webhook_url, content=body, headers=headers
        )
    except httpx.HTTPError as exc:
        raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code >= 300:
        raise WebhookError(f"receiver answered {response.status_code}")


@hookimpl
def asyncgate_emitter_names() -> list[str]:
    return [NAME]


@hookimpl
def asyncgate_check_settings(settings: Settings) -> None:
    if NAME in settings.anomaly_emitters and not settings.webhook_url:
        raise ConfigError("ASYNCGATE_ANOMALY_EMITTERS includes webhook: set ASYNCGATE_WEBHOOK_URL")


@hookimpl
def asyncgate_emit_anomaly(anomaly: dict[str, Any], tenant: str, settings: Settings):
    return deliver(anomaly, tenant, settings) if NAME in settings.anomaly_emitters else None
