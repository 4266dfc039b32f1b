"""The ``log`` anomaly emitter: one structured log line per anomaly."""

from __future__ import annotations

import logging
from typing import Any

from asyncgate import hookimpl
from asyncgate.settings import Settings

NAME = "log"
log = logging.getLogger("asyncgate.anomaly")


async def _log(anomaly: dict[str, Any], tenant: str) -> None:
    log.warning(
        anomaly["type"],
        extra={
            "tenant": tenant,
            "anomaly_type": anomaly["type"],
            "receipt_id": anomaly.get("receipt_id"),
            "task_id": anomaly.get("task_id"),
            "to_principal": anomaly.get("to_principal"),
            "body": anomaly.get("body"),
        },
    )


@hookimpl
def asyncgate_emitter_names() -> list[str]:
    return [NAME]


@hookimpl
def asyncgate_emit_anomaly(anomaly: dict[str, Any], tenant: str, settings: Settings):
    return _log(anomaly, tenant) if NAME in settings.anomaly_emitters else None
