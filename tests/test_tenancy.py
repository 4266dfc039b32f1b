"""Tenants never see each other: another tenant's objects answer 404 on every endpoint."""

from __future__ import annotations

import pytest


@pytest.fixture
def world(client, tenants):
    """A task of tenant a with a lease and a receipt, and a client for tenant b."""
    task = client.create_task()
    [grant] = client.claim()
    receipt = client.receipt(
        type="task.progress", task_id=task["task_id"], lease_id=grant["lease_id"]
    ).json["receipt"]
    return task, grant, receipt, client.as_key(tenants.keys["b"])


def test_reads_of_another_tenant_are_404(world):
    task, _, receipt, other = world
    assert other.get(f"/v1/tasks/{task['task_id']}").status_code == 404
    assert other.get(f"/v1/receipts/{receipt['receipt_id']}").status_code == 404


def test_listings_of_another_tenant_are_empty(world):
    task, _, _, other = world
    assert other.get("/v1/tasks").json == []
    assert other.get("/v1/receipts").json == []
    assert other.get(f"/v1/receipts?task_id={task['task_id']}").json == []
    assert other.get("/v1/obligations/open").json == []
    assert other.post("/v1/bootstrap").json == []


def test_cursors_of_another_tenant_are_unknown(world):
    task, _, receipt, other = world
    assert other.get(f"/v1/tasks?after={task['task_id']}").status_code == 422
    assert other.get(f"/v1/receipts?after={receipt['receipt_id']}").status_code == 422


def test_leases_of_another_tenant_are_404(world):
    _, grant, _, other = world
    assert other.post(f"/v1/leases/{grant['lease_id']}/renew").status_code == 404
    assert other.delete(f"/v1/leases/{grant['lease_id']}").status_code == 404
    assert other.claim() == []


def test_receipts_cannot_reach_into_another_tenant(world):
    task, grant, receipt, other = world
    result = other.receipt(type="task.failure", task_id=task["task_id"])
    assert result.status_code == 404
    mine = other.create_task()
    result = other.receipt(
        type="task.failure", task_id=mine["task_id"], parent_receipt_ids=[receipt["receipt_id"]]
    )
    assert result.status_code == 422  # the parent does not exist in tenant b
    result = other.receipt(type="task.failure", task_id=mine["task_id"], lease_id=grant["lease_id"])
    assert result.status_code == 404


def test_a_receipt_id_in_one_tenant_does_not_collide_with_another(world):
    task, _, receipt, other = world
    mine = other.create_task()
    result = other.receipt(
        type="task.failure", task_id=mine["task_id"], receipt_id=receipt["receipt_id"]
    )
    assert result.status_code == 201


def test_the_original_tenant_still_sees_its_objects(world, client):
    task, _, receipt, _ = world
    assert client.get(f"/v1/tasks/{task['task_id']}").status_code == 200
    assert client.get(f"/v1/receipts/{receipt['receipt_id']}").status_code == 200
