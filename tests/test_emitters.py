"""Anomaly emitters: called after commit for every system.anomaly.*, failures counted."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from asyncgate.settings import ConfigError, Settings


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes, str | None]] = []
    status = 204

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(
            (json.loads(body), body, self.headers.get("X-AsyncGate-Signature"))
        )
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args) -> None:
        return None


@pytest.fixture
def receiver():
    Receiver.received = []
    Receiver.status = 204
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Receiver
    server.shutdown()


def unlocatable_success(client):
    task = client.create_task()
    result = client.receipt(
        type="task.success",
        task_id=task["task_id"],
        parent_receipt_ids=[task["obligation_receipt_id"]],
    )
    return result.json["anomalies"][0]


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_log_emitter_writes_one_structured_line(client, caplog, monkeypatch):
    # Listen on the emitter's logger itself: logs.configure() may stop propagation to root.
    logger = logging.getLogger("asyncgate.anomaly")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    try:
        anomaly_id = unlocatable_success(client)
        client.get("/v1/health")  # let the background delivery run
    finally:
        logger.removeHandler(caplog.handler)
    records = [r for r in caplog.records if r.name == "asyncgate.anomaly"]
    assert [r.receipt_id for r in records] == [anomaly_id]
    assert records[0].anomaly_type == "system.anomaly.locatability_missing"


def test_webhook_emitter_posts_each_anomaly_signed(make_client, receiver):
    url, handler = receiver
    client = make_client(ANOMALY_EMITTERS="log,webhook", WEBHOOK_URL=url, WEBHOOK_SECRET="s")
    anomaly_id = unlocatable_success(client)

    def delivered():
        client.get("/v1/health")  # the event loop (and the delivery) runs during requests
        return bool(handler.received)

    assert wait_for(delivered)
    [(payload, raw, signature)] = handler.received
    assert payload["anomaly"]["receipt_id"] == anomaly_id
    assert payload["anomaly"]["type"] == "system.anomaly.locatability_missing"
    assert payload["tenant"].startswith("a-")
    expected = hmac.new(b"s", raw, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"


def test_webhook_failures_are_counted_and_never_reach_the_client(make_client, receiver):
    url, handler = receiver
    handler.status = 500
    client = make_client(ANOMALY_EMITTERS="webhook", WEBHOOK_URL=url)
    task = client.create_task()
    result = client.receipt(type="task.success", task_id=task["task_id"])
    assert result.status_code == 201

    def counted():
        metrics = client.get("/v1/metrics").text
        return 'asyncgate_emitter_failures_total{emitter="webhook_emitter"} 1.0' in metrics

    assert wait_for(counted)


def test_webhook_without_url_stops_startup():
    with pytest.raises(ConfigError, match="WEBHOOK_URL"):
        from asyncgate import plugins

        plugins.check_emitters(
            Settings.from_env({"ASYNCGATE_API_KEY": "k", "ASYNCGATE_ANOMALY_EMITTERS": "webhook"})
        )
