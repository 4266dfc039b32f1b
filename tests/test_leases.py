"""Leases: priority order, expiry read lazily, takeover anomaly, renew and release limits."""

from __future__ import annotations

import time
import uuid


def test_claims_come_in_priority_then_age_order(client):
    low = client.create_task(type="x", priority=0)
    high = client.create_task(type="x", priority=10)
    low_later = client.create_task(type="x", priority=0)
    grants = client.claim(max_tasks=3)
    assert [g["task"]["task_id"] for g in grants] == [
        high["task_id"],
        low["task_id"],
        low_later["task_id"],
    ]


def test_claim_respects_types_and_max_tasks(client):
    for kind in ("a", "b", "a"):
        client.create_task(type=kind)
    grants = client.claim(types=["a"], max_tasks=5)
    assert [g["task"]["type"] for g in grants] == ["a", "a"]
    assert client.claim(types=["a"]) == []
    assert len(client.claim(max_tasks=1)) == 1


def test_claim_returns_lease_and_active_task(client):
    task = client.create_task()
    [grant] = client.claim(worker="worker:gpu-7", ttl_seconds=30)
    assert grant["lease_generation"] == 1
    assert grant["task"]["state"] == "ACTIVE"
    assert grant["task"]["lease"]["worker"] == "worker:gpu-7"
    view = client.get(f"/v1/tasks/{task['task_id']}").json
    assert view["state"] == "ACTIVE" and view["lease"]["lease_id"] == grant["lease_id"]


def test_nothing_claimable_is_an_empty_array(client):
    assert client.claim() == []


def test_a_leased_task_is_not_claimed_twice(client):
    client.create_task()
    assert len(client.claim()) == 1
    assert client.claim(worker="worker:w2") == []


def test_expired_lease_reads_pending_and_takeover_writes_an_anomaly(client):
    task = client.create_task(principal="agent:owner")
    [first] = client.claim(worker="worker:w1", ttl_seconds=1)
    time.sleep(1.2)
    view = client.get(f"/v1/tasks/{task['task_id']}").json
    assert view["state"] == "PENDING" and view["lease"] is None
    [second] = client.claim(worker="worker:w2")
    assert second["lease_generation"] == 2
    anomalies = client.get("/v1/receipts?type=system.anomaly.lease_expired").json
    [anomaly] = anomalies
    assert anomaly["to_principal"] == "agent:owner"
    assert anomaly["parent_receipt_ids"] == [task["obligation_receipt_id"]]
    assert anomaly["body"]["lease_id"] == first["lease_id"]
    assert anomaly["body"]["worker"] == "worker:w1"
    assert "expired_at" in anomaly["body"]
    # Lost authority is not failure: no failure receipt, obligation still open.
    types = [r["type"] for r in client.get(f"/v1/receipts?task_id={task['task_id']}").json]
    assert "task.failure" not in types
    assert client.get(f"/v1/tasks/{task['task_id']}").json["obligation_open"] is True


def test_renew_extends_the_current_lease(client):
    client.create_task()
    [grant] = client.claim(ttl_seconds=5)
    result = client.post(f"/v1/leases/{grant['lease_id']}/renew", json={"ttl_seconds": 600})
    assert result.status_code == 200
    assert result.json["lease_id"] == grant["lease_id"]
    assert result.json["expires_at"] > grant["expires_at"]
    assert client.post(f"/v1/leases/{grant['lease_id']}/renew").status_code == 200


def test_renew_never_revives_an_expired_lease(client):
    client.create_task()
    [grant] = client.claim(ttl_seconds=1)
    time.sleep(1.2)
    result = client.post(f"/v1/leases/{grant['lease_id']}/renew", json={})
    assert result.status_code == 409 and result.json["code"] == "lease_lost"


def test_renew_after_release_or_supersede_is_409(client):
    client.create_task()
    [grant] = client.claim(ttl_seconds=1)
    assert client.delete(f"/v1/leases/{grant['lease_id']}").status_code == 204
    assert client.post(f"/v1/leases/{grant['lease_id']}/renew").status_code == 409
    [again] = client.claim(ttl_seconds=1)
    time.sleep(1.2)
    client.claim(worker="worker:w3")
    assert client.post(f"/v1/leases/{again['lease_id']}/renew").status_code == 409


def test_renew_and_release_of_unknown_lease_is_404(client):
    assert client.post(f"/v1/leases/{uuid.uuid4()}/renew").status_code == 404
    assert client.delete(f"/v1/leases/{uuid.uuid4()}").status_code == 404


def test_renew_refuses_bad_ttl(client):
    client.create_task()
    [grant] = client.claim()
    result = client.post(f"/v1/leases/{grant['lease_id']}/renew", json={"ttl_seconds": 3601})
    assert result.status_code == 422 and result.json["field"] == "ttl_seconds"


def test_release_returns_the_task_to_pending_without_failure(client):
    task = client.create_task()
    [grant] = client.claim()
    assert client.delete(f"/v1/leases/{grant['lease_id']}").status_code == 204
    view = client.get(f"/v1/tasks/{task['task_id']}").json
    assert view["state"] == "PENDING" and view["lease"] is None
    assert view["lease_generation"] == 1
    assert client.delete(f"/v1/leases/{grant['lease_id']}").status_code == 409
    [regrant] = client.claim()
    assert regrant["lease_generation"] == 2


def test_terminal_receipt_ends_the_lease(client):
    task = client.create_task()
    [grant] = client.claim()
    client.receipt(type="task.failure", task_id=task["task_id"], lease_id=grant["lease_id"])
    assert client.delete(f"/v1/leases/{grant['lease_id']}").status_code == 409
    assert client.claim() == []  # terminal tasks are never claimable


def test_claim_refuses_out_of_range_fields(client):
    for body, field in [
        ({}, "worker"),
        ({"worker": "no-kind"}, "worker"),
        ({"worker": "worker:w", "max_tasks": 0}, "max_tasks"),
        ({"worker": "worker:w", "max_tasks": 101}, "max_tasks"),
        ({"worker": "worker:w", "ttl_seconds": 0}, "ttl_seconds"),
        ({"worker": "worker:w", "ttl_seconds": 3601}, "ttl_seconds"),
        ({"worker": "worker:w", "wait_seconds": 21}, "wait_seconds"),
        ({"worker": "worker:w", "types": "x"}, "types"),
    ]:
        result = client.post("/v1/leases", json=body)
        assert result.status_code == 422, body
        assert result.json["field"] == field, body


def test_long_poll_times_out_with_an_empty_array(client):
    started = time.monotonic()
    assert client.claim(wait_seconds=1) == []
    assert time.monotonic() - started >= 0.9
