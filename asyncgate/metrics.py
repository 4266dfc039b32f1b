"""Prometheus metrics, in a registry per app so that several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "asyncgate_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "asyncgate_http_request_seconds", "Time to answer a request", ["route"], registry=r
        )
        self.tasks_created = Counter("asyncgate_tasks_created", "Tasks created", registry=r)
        self.leases_granted = Counter("asyncgate_leases_granted", "Leases granted", registry=r)
        self.receipts_written = Counter(
            "asyncgate_receipts_written", "Client receipts written", ["type"], registry=r
        )
        self.joined_requests = Histogram(
            "asyncgate_joined_requests",
            "Requests whose writes shared one statement (see coalesce.py), by kind of write",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.anomalies = Counter(
            "asyncgate_anomalies", "Anomalies recorded or raised", ["type"], registry=r
        )
        self.rate_limited = Counter(
            "asyncgate_rate_limited", "Requests refused with 429", registry=r
        )
        self.rate_limit_store_errors = Counter(
            "asyncgate_rate_limit_store_errors",
            "Rate-limit store failures (handled per ASYNCGATE_RATE_LIMIT_FAILURE_MODE)",
            registry=r,
        )
        self.emitter_failures = Counter(
            "asyncgate_emitter_failures", "Anomaly deliveries that failed", ["emitter"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
