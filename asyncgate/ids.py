"""Identifiers and content fingerprints."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

SYSTEM_PRINCIPAL = "system:asyncgate"
_ANOMALY_NAMESPACE = uuid.UUID("6f1d3c52-7a0e-4b55-9a53-0d5f8e6c1a27")


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(source_id: str, purpose: str) -> str:
    """A stable id derived from another, so an idempotent replay can name what it wrote."""
    return str(uuid.uuid5(_ANOMALY_NAMESPACE, f"{source_id}:{purpose}"))


def fingerprint(content: dict[str, Any]) -> str:
    """A digest of request content, to tell an idempotent replay from a conflicting reuse."""
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)
