"""Tasks: creation with its obligation, idempotency, batches, reads and pagination."""

from __future__ import annotations

import uuid

from conftest import follow_pages


def ledger_of(client, task_id):
    return client.get(f"/v1/receipts?task_id={task_id}").json


def test_create_writes_the_task_and_its_obligation_together(client):
    result = client.post(
        "/v1/tasks",
        json={
            "type": "render",
            "payload": {"page": 3},
            "principal": "agent:planner",
            "priority": 5,
        },
    )
    assert result.status_code == 201
    task = result.json
    assert task["state"] == "PENDING" and task["lease"] is None
    assert task["lease_generation"] == 0 and task["obligation_open"] is True
    assert task["principal"] == "agent:planner" and task["created_by"] == "service:a"
    [obligation] = ledger_of(client, task["task_id"])
    assert obligation["receipt_id"] == task["obligation_receipt_id"]
    assert obligation["type"] == "task.assigned"
    assert obligation["to_principal"] == "agent:planner"
    assert obligation["from_principal"] == "service:a"


def test_defaults_payload_priority_and_principal(client):
    task = client.create_task()
    assert task["payload"] == {} and task["priority"] == 0
    assert task["principal"] == "service:a"


def test_idempotent_replay_returns_the_same_task_without_a_second_obligation(client):
    body = {"type": "send", "payload": {"to": "x"}, "idempotency_key": "order-42"}
    first = client.post("/v1/tasks", json=body)
    again = client.post("/v1/tasks", json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json["task_id"] == first.json["task_id"]
    assert again.json["obligation_receipt_id"] == first.json["obligation_receipt_id"]
    assert len(client.get("/v1/obligations/open").json) == 1


def test_idempotency_key_with_a_different_body_is_409(client):
    client.post("/v1/tasks", json={"type": "send", "idempotency_key": "k1"})
    result = client.post(
        "/v1/tasks", json={"type": "send", "payload": {"a": 1}, "idempotency_key": "k1"}
    )
    assert result.status_code == 409
    assert result.json["field"] == "idempotency_key"
    assert len(client.get("/v1/tasks").json) == 1


def test_idempotency_keys_are_per_tenant(client, tenants):
    body = {"type": "send", "idempotency_key": "shared"}
    mine = client.post("/v1/tasks", json=body)
    theirs = client.post("/v1/tasks", json=body, key=tenants.keys["b"])
    assert mine.status_code == theirs.status_code == 201
    assert mine.json["task_id"] != theirs.json["task_id"]


def test_batch_creates_every_task_with_its_obligation(client):
    result = client.post("/v1/tasks/batch", json={"tasks": [{"type": f"t{i}"} for i in range(5)]})
    assert result.status_code == 201
    assert [t["type"] for t in result.json["tasks"]] == [f"t{i}" for i in range(5)]
    assert len(client.get("/v1/obligations/open").json) == 5


def test_batch_is_all_or_nothing(client):
    client.post("/v1/tasks", json={"type": "x", "idempotency_key": "taken"})
    result = client.post(
        "/v1/tasks/batch",
        json={"tasks": [{"type": "ok"}, {"type": "y", "idempotency_key": "taken"}]},
    )
    assert result.status_code == 409
    assert result.json["field"] == "tasks.1.idempotency_key"
    assert len(client.get("/v1/tasks").json) == 1


def test_batch_validation_names_the_item(client):
    result = client.post("/v1/tasks/batch", json={"tasks": [{"type": "ok"}, {"type": 7}]})
    assert result.status_code == 422
    assert result.json["field"] == "tasks.1.type"


def test_batch_replays_an_idempotency_key_repeated_inside_it(client):
    item = {"type": "x", "idempotency_key": "twice"}
    result = client.post("/v1/tasks/batch", json={"tasks": [item, item]})
    assert result.status_code == 201
    first, second = result.json["tasks"]
    assert first["task_id"] == second["task_id"]
    assert len(client.get("/v1/obligations/open").json) == 1


def test_batch_limits(client):
    assert client.post("/v1/tasks/batch", json={"tasks": []}).status_code == 422
    too_many = {"tasks": [{"type": "x"}] * 1001}
    assert client.post("/v1/tasks/batch", json=too_many).status_code == 422


def test_get_unknown_task_is_404(client):
    assert client.get(f"/v1/tasks/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/tasks/not-a-uuid").status_code == 404


def test_list_pages_with_link_next_until_exhausted(client):
    created = [client.create_task(type=f"t{i}")["task_id"] for i in range(5)]
    seen = [t["task_id"] for t in follow_pages(client, "/v1/tasks?limit=2")]
    assert seen == created


def test_list_is_an_empty_array_when_nothing_matches(client):
    result = client.get("/v1/tasks?type=nothing-like-this")
    assert result.status_code == 200 and result.json == []
    assert "link" not in result.headers


def test_list_filters_by_type_and_lazily_evaluated_state(client):
    client.create_task(type="a")
    client.create_task(type="b")
    assert [t["type"] for t in client.get("/v1/tasks?type=b").json] == ["b"]
    client.claim(types=["a"], ttl_seconds=1)
    assert [t["type"] for t in client.get("/v1/tasks?state=ACTIVE").json] == ["a"]
    import time

    time.sleep(1.2)
    assert client.get("/v1/tasks?state=ACTIVE").json == []
    assert {t["type"] for t in client.get("/v1/tasks?state=PENDING").json} == {"a", "b"}


def test_list_refuses_bad_query_parameters(client):
    for query, field in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=abc", "limit"),
        ("state=DONE", "state"),
        ("after=nope", "after"),
        ("limit=1&limit=2", "limit"),
        (f"after={uuid.uuid4()}", "after"),
    ]:
        result = client.get(f"/v1/tasks?{query}")
        assert result.status_code == 422, query
        assert result.json["field"] == field, query
