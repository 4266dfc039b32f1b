"""Identifiers and content fingerprints."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

SYSTEM_PRINCIPAL = "system:asyncgate"
_ANOMALY_NAMESPACE = uuid.UUID("6f1d3c52-7a0e-4b55-9a53-0d5f8e6c1a27")


class _RandomBytes(threading.local):
    """os.urandom read 4 KiB at a time, per thread: one system call per 256 ids, not per id."""

    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0

    def take16(self) -> bytes:
        if self.offset >= len(self.buffer):
            self.buffer, self.offset = os.urandom(4096), 0
        start = self.offset
        self.offset += 16
        return self.buffer[start : start + 16]


_random = _RandomBytes()
# A forked child must not hand out the ids its parent's buffer still holds.
os.register_at_fork(after_in_child=_random.__init__)


def new_id() -> str:
    """A time-ordered (version 7, RFC 9562) UUID in canonical form.

    The first 48 bits are the Unix time in milliseconds, the last 74 random. Ids made close in
    time sort close together, so a primary-key B-tree takes new ids at its right edge: a few
    hot pages rather than a random page per insert, which PostgreSQL would otherwise log whole
    (a full-page image) after every checkpoint. Ids of one millisecond are in random order.
    Written here rather than taken from a package: uuid.uuid7 arrives only in Python 3.14, and
    this costs less than str(uuid.uuid4()).
    """
    raw = bytearray(_random.take16())
    raw[0:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw[6] = raw[6] & 0x0F | 0x70  # version 7
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_id(source_id: str, purpose: str) -> str:
    """A stable id derived from another, so an idempotent replay can name what it wrote."""
    return str(uuid.uuid5(_ANOMALY_NAMESPACE, f"{source_id}:{purpose}"))


def fingerprint(content: dict[str, Any]) -> str:
    """A digest of request content, to tell an idempotent replay from a conflicting reuse."""
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)
