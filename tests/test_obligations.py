"""The open-obligation dump: flat, oldest first, streamed or paged; and its deprecated alias."""

from __future__ import annotations

import uuid

from conftest import follow_pages


def close(client, task):
    client.receipt(
        type="task.failure",
        task_id=task["task_id"],
        parent_receipt_ids=[task["obligation_receipt_id"]],
    )


def test_dump_lists_every_open_obligation_oldest_first(client):
    tasks = [client.create_task(type=f"t{i}", priority=i) for i in range(4)]
    close(client, tasks[1])
    dump = client.get("/v1/obligations/open")
    assert dump.status_code == 200
    assert dump.headers["content-type"].startswith("application/json")
    assert [o["receipt_id"] for o in dump.json] == [
        tasks[i]["obligation_receipt_id"] for i in (0, 2, 3)
    ]
    assert all(o["type"] == "task.assigned" for o in dump.json)


def test_dumped_obligations_are_exactly_the_stored_receipts(client):
    tasks = [client.create_task(type=f"t{i}", priority=i, principal="agent:x") for i in range(3)]
    for entry in client.get("/v1/obligations/open").json:
        assert entry == client.get(f"/v1/receipts/{entry['receipt_id']}").json
    paged = client.get("/v1/obligations/open?limit=10").json
    assert [o["task_id"] for o in paged] == [t["task_id"] for t in tasks]
    assert paged == client.get("/v1/obligations/open").json


def test_empty_dump_is_an_empty_array(client):
    result = client.get("/v1/obligations/open")
    assert result.status_code == 200 and result.json == []


def test_streamed_dump_of_many_obligations_is_one_valid_array(client):
    body = {"tasks": [{"type": "bulk", "payload": {"n": i}} for i in range(1000)]}
    assert client.post("/v1/tasks/batch", json=body).status_code == 201
    assert client.post("/v1/tasks/batch", json=body).status_code == 201
    dump = client.get("/v1/obligations/open").json
    assert len(dump) == 2000
    assert len({o["receipt_id"] for o in dump}) == 2000


def test_keyset_pages_cover_the_dump_exactly(client):
    tasks = [client.create_task() for _ in range(5)]
    seen = [o["receipt_id"] for o in follow_pages(client, "/v1/obligations/open?limit=2")]
    assert seen == [t["obligation_receipt_id"] for t in tasks]
    after = client.get(f"/v1/obligations/open?after={tasks[2]['obligation_receipt_id']}").json
    assert [o["receipt_id"] for o in after] == [t["obligation_receipt_id"] for t in tasks[3:]]


def test_unknown_cursor_is_refused_before_streaming(client):
    result = client.get(f"/v1/obligations/open?after={uuid.uuid4()}")
    assert result.status_code == 422 and result.json["field"] == "after"


def test_bootstrap_alias_answers_the_same_with_deprecation_headers(client):
    client.create_task()
    current = client.get("/v1/obligations/open")
    alias = client.post("/v1/bootstrap")
    assert alias.status_code == 200
    assert alias.json == current.json
    assert alias.headers["deprecation"] == "true"
    assert alias.headers["link"] == '</v1/obligations/open>; rel="successor-version"'
