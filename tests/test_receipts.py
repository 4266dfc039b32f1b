"""Receipts through HTTP: every truth-table row, locatability, fencing, idempotency, batches."""

from __future__ import annotations

import time
import uuid

import pytest
from conftest import follow_pages
from prometheus_client.parser import text_string_to_metric_families

ARTIFACT = {"uri": "s3://results/1.json", "media_type": "application/json", "size_bytes": 12}


def started_task(client, **fields):
    task = client.create_task(**fields)
    [grant] = client.claim()
    assert grant["task"]["task_id"] == task["task_id"]
    return task, grant


def open_ids(client):
    return {o["receipt_id"] for o in client.get("/v1/obligations/open").json}


@pytest.mark.parametrize(
    ("receipt_type", "extra", "closes", "state"),
    [
        ("task.started", {}, False, "ACTIVE"),
        ("task.progress", {"body": {"pct": 40}}, False, "ACTIVE"),
        ("task.success", {"artifacts": [ARTIFACT]}, True, "COMPLETED"),
        ("task.success", {"delivery_proof": {"smtp_id": "abc"}}, True, "COMPLETED"),
        ("task.failure", {"body": {"error": "boom"}}, True, "FAILED"),
        ("task.cancelled", {}, True, "CANCELLED"),
    ],
)
def test_each_client_receipt_type_terminates_as_the_truth_table_says(
    client, receipt_type, extra, closes, state
):
    task, grant = started_task(client)
    obligation = task["obligation_receipt_id"]
    result = client.receipt(
        type=receipt_type,
        task_id=task["task_id"],
        lease_id=grant["lease_id"],
        parent_receipt_ids=[obligation],
        **extra,
    )
    assert result.status_code == 201, result.text
    assert result.json["terminated"] == ([obligation] if closes else [])
    assert result.json["anomalies"] == []
    assert result.json["receipt"]["parent_receipt_ids"] == [obligation]
    after = client.get(f"/v1/tasks/{task['task_id']}").json
    assert after["state"] == state
    assert after["obligation_open"] is (not closes)
    assert (obligation in open_ids(client)) is (not closes)
    if closes:
        assert after["lease"] is None


@pytest.mark.parametrize("receipt_type", ["task.assigned", "system.anomaly.lease_expired"])
def test_clients_cannot_write_asyncgate_receipts(client, receipt_type):
    task = client.create_task()
    result = client.receipt(type=receipt_type, task_id=task["task_id"])
    assert result.status_code == 422
    assert result.json["field"] == "type"
    assert result.json["code"] == "reserved_receipt_type"


def test_unknown_receipt_type_is_refused(client):
    task = client.create_task()
    result = client.receipt(type="task.finished", task_id=task["task_id"])
    assert result.status_code == 422
    assert result.json["code"] == "unknown_receipt_type"


@pytest.mark.parametrize(
    "evidence",
    [{}, {"artifacts": []}, {"delivery_proof": {}}, {"artifacts": [], "delivery_proof": {}}],
    ids=["nothing", "empty-artifacts", "empty-proof", "both-empty"],
)
def test_success_without_locatability_is_stored_unlinked_with_an_anomaly(client, evidence):
    task, grant = started_task(client, principal="agent:planner")
    obligation = task["obligation_receipt_id"]
    result = client.receipt(
        type="task.success", task_id=task["task_id"], parent_receipt_ids=[obligation], **evidence
    )
    assert result.status_code == 201, result.text
    receipt = result.json["receipt"]
    assert receipt["parent_receipt_ids"] == []
    assert receipt["stripped_parent_receipt_ids"] == [obligation]
    assert result.json["terminated"] == []
    [anomaly_id] = result.json["anomalies"]
    anomaly = client.get(f"/v1/receipts/{anomaly_id}").json
    assert anomaly["type"] == "system.anomaly.locatability_missing"
    assert anomaly["to_principal"] == "agent:planner"
    assert anomaly["parent_receipt_ids"] == [receipt["receipt_id"]]
    assert anomaly["body"]["stripped_parent_receipt_ids"] == [obligation]
    # The obligation stays open, the task is COMPLETED and its lease has ended.
    assert obligation in open_ids(client)
    view = client.get(f"/v1/tasks/{task['task_id']}").json
    assert view["state"] == "COMPLETED" and view["obligation_open"] is True
    assert view["lease"] is None


def test_later_locatable_success_closes_the_obligation_of_a_completed_task(client):
    task, _ = started_task(client)
    obligation = task["obligation_receipt_id"]
    client.receipt(type="task.success", task_id=task["task_id"], parent_receipt_ids=[obligation])
    result = client.receipt(
        type="task.success",
        task_id=task["task_id"],
        parent_receipt_ids=[obligation],
        artifacts=[ARTIFACT],
    )
    assert result.json["terminated"] == [obligation]
    view = client.get(f"/v1/tasks/{task['task_id']}").json
    assert view["state"] == "COMPLETED" and view["obligation_open"] is False


def test_terminating_receipt_without_naming_the_obligation_changes_state_only(client):
    task = client.create_task()
    result = client.receipt(type="task.failure", task_id=task["task_id"])
    assert result.status_code == 201
    assert result.json["terminated"] == []
    view = client.get(f"/v1/tasks/{task['task_id']}").json
    assert view["state"] == "FAILED" and view["obligation_open"] is True


def test_any_actor_in_the_tenant_may_discharge_without_a_lease(client, tenants):
    task, _ = started_task(client)
    delegate = client.as_key(tenants.keys["delegate"])
    result = delegate.receipt(
        type="task.cancelled",
        task_id=task["task_id"],
        parent_receipt_ids=[task["obligation_receipt_id"]],
    )
    assert result.status_code == 201
    assert result.json["terminated"] == [task["obligation_receipt_id"]]
    assert result.json["receipt"]["from_principal"] == "agent:delegate"
    assert result.json["receipt"]["to_principal"] == "service:a"


def test_a_terminating_receipt_closes_every_open_obligation_it_names(client):
    first = client.create_task()
    second = client.create_task()
    earlier = client.receipt(type="task.failure", task_id=first["task_id"]).json["receipt"][
        "receipt_id"
    ]
    names = [first["obligation_receipt_id"], second["obligation_receipt_id"], earlier]
    result = client.receipt(
        type="task.cancelled", task_id=first["task_id"], parent_receipt_ids=names
    )
    # Obligations close wherever they belong; the other parent is a causality link.
    assert result.json["terminated"] == sorted(names[:2])
    other = client.get(f"/v1/tasks/{second['task_id']}").json
    assert other["obligation_open"] is False
    assert other["state"] == "PENDING"  # execution state belongs to the receipt's own task
    assert client.get("/v1/obligations/open").json == []


def test_a_closed_obligation_is_not_terminated_twice(client):
    task = client.create_task()
    names = [task["obligation_receipt_id"]]
    first = client.receipt(type="task.failure", task_id=task["task_id"], parent_receipt_ids=names)
    again = client.receipt(type="task.failure", task_id=task["task_id"], parent_receipt_ids=names)
    assert first.json["terminated"] == names
    assert again.status_code == 201 and again.json["terminated"] == []


def test_from_principal_is_always_the_authenticated_caller(client):
    task = client.create_task()
    result = client.post(
        "/v1/receipts",
        json={"type": "task.failure", "task_id": task["task_id"], "from_principal": "agent:evil"},
    )
    assert result.status_code == 422  # unknown fields are refused, never trusted
    result = client.receipt(type="task.failure", task_id=task["task_id"])
    assert result.json["receipt"]["from_principal"] == "service:a"
    assert result.json["receipt"]["to_principal"] == "service:a"


def test_unknown_parent_is_refused_and_nothing_is_written(client):
    task = client.create_task()
    missing = str(uuid.uuid4())
    result = client.receipt(
        type="task.failure", task_id=task["task_id"], parent_receipt_ids=[missing]
    )
    assert result.status_code == 422
    assert result.json["field"] == "parent_receipt_ids"
    assert missing in result.json["detail"]
    assert client.get(f"/v1/tasks/{task['task_id']}").json["state"] == "PENDING"
    ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert [r["type"] for r in ledger] == ["task.assigned"]


def test_too_many_parents_is_refused(client):
    task = client.create_task()
    parents = [str(uuid.uuid4()) for _ in range(33)]
    result = client.receipt(
        type="task.failure", task_id=task["task_id"], parent_receipt_ids=parents
    )
    assert result.status_code == 422
    assert result.json["field"] == "parent_receipt_ids"


def test_receipt_body_over_64_kib_is_refused(client):
    task = client.create_task()
    result = client.receipt(
        type="task.failure", task_id=task["task_id"], body={"blob": "x" * (64 * 1024)}
    )
    assert result.status_code == 422
    assert result.json["field"] == "body"


def test_unknown_task_is_404(client):
    result = client.receipt(type="task.failure", task_id=str(uuid.uuid4()))
    assert result.status_code == 404
    assert result.json["field"] == "task_id"


# Fencing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("receipt_type", ["task.started", "task.progress"])
def test_started_and_progress_require_a_lease(client, receipt_type):
    task = client.create_task()
    result = client.receipt(type=receipt_type, task_id=task["task_id"])
    assert result.status_code == 422
    assert result.json["field"] == "lease_id"


def test_stale_lease_after_expiry_is_lease_lost_and_writes_nothing(client):
    task = client.create_task()
    [grant] = client.claim(ttl_seconds=1)
    time.sleep(1.2)
    result = client.receipt(
        type="task.progress", task_id=task["task_id"], lease_id=grant["lease_id"]
    )
    assert result.status_code == 409
    assert result.json["code"] == "lease_lost"
    ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert [r["type"] for r in ledger] == ["task.assigned"]


def test_superseded_lease_is_fenced_even_for_terminating_receipts(client):
    task = client.create_task()
    [old] = client.claim(ttl_seconds=1)
    time.sleep(1.2)
    [new] = client.claim(worker="worker:w2")
    assert new["lease_generation"] == old["lease_generation"] + 1
    result = client.receipt(
        type="task.success",
        task_id=task["task_id"],
        lease_id=old["lease_id"],
        parent_receipt_ids=[task["obligation_receipt_id"]],
        artifacts=[ARTIFACT],
    )
    assert result.status_code == 409 and result.json["code"] == "lease_lost"
    assert client.get(f"/v1/tasks/{task['task_id']}").json["obligation_open"] is True
    ok = client.receipt(type="task.progress", task_id=task["task_id"], lease_id=new["lease_id"])
    assert ok.status_code == 201


def test_released_lease_is_fenced(client):
    task = client.create_task()
    [grant] = client.claim()
    assert client.delete(f"/v1/leases/{grant['lease_id']}").status_code == 204
    result = client.receipt(
        type="task.progress", task_id=task["task_id"], lease_id=grant["lease_id"]
    )
    assert result.status_code == 409 and result.json["code"] == "lease_lost"


def test_lease_of_another_task_is_lease_lost(client):
    first = client.create_task()
    client.create_task()
    grants = client.claim(max_tasks=2)
    other = next(g for g in grants if g["task"]["task_id"] != first["task_id"])
    result = client.receipt(
        type="task.progress", task_id=first["task_id"], lease_id=other["lease_id"]
    )
    assert result.status_code == 409


def test_unknown_lease_in_body_is_404(client):
    task = client.create_task()
    result = client.receipt(
        type="task.progress", task_id=task["task_id"], lease_id=str(uuid.uuid4())
    )
    assert result.status_code == 404 and result.json["field"] == "lease_id"


def test_progress_on_a_terminal_task_is_409(client):
    task, grant = started_task(client)
    client.receipt(type="task.cancelled", task_id=task["task_id"])
    result = client.receipt(
        type="task.progress", task_id=task["task_id"], lease_id=grant["lease_id"]
    )
    assert result.status_code == 409
    assert result.json["code"] == "task_terminal"


# Idempotency -------------------------------------------------------------------------------


def test_receipt_id_replay_with_same_content_is_200_and_writes_once(client):
    task, _ = started_task(client)
    receipt_id = str(uuid.uuid4())
    fields = {
        "type": "task.success",
        "task_id": task["task_id"],
        "parent_receipt_ids": [task["obligation_receipt_id"]],
        "receipt_id": receipt_id,
    }
    first = client.receipt(**fields)
    again = client.receipt(**fields)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json == first.json  # same receipt, same anomaly id
    ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert sum(r["type"] == "task.success" for r in ledger) == 1
    assert sum(r["type"] == "system.anomaly.locatability_missing" for r in ledger) == 1


@pytest.mark.parametrize("receipt_type", ["task.progress", "task.success"])
def test_an_upper_case_receipt_id_is_written_once_in_lower_case(client, receipt_type):
    # The one-statement writes (progress, and success under a lease) match what they wrote to
    # what was sent by receipt_id: the id is made canonical before either sees it.
    task, grant = started_task(client)
    receipt_id = str(uuid.uuid4())
    fields = {
        "type": receipt_type,
        "task_id": task["task_id"],
        "lease_id": grant["lease_id"],
        "parent_receipt_ids": [task["obligation_receipt_id"]],
        "artifacts": [ARTIFACT],
        "receipt_id": receipt_id.upper(),
    }
    first = client.receipt(**fields)
    assert first.status_code == 201, first.text
    assert first.json["receipt"]["receipt_id"] == receipt_id
    again = client.receipt(**fields)
    assert again.status_code == 200 and again.json["receipt"] == first.json["receipt"]
    assert client.get(f"/v1/receipts/{receipt_id}").json == first.json["receipt"]


def test_receipt_id_replay_keeps_the_termination_it_made(client):
    task = client.create_task()
    fields = {
        "type": "task.failure",
        "task_id": task["task_id"],
        "parent_receipt_ids": [task["obligation_receipt_id"]],
        "receipt_id": str(uuid.uuid4()),
    }
    first = client.receipt(**fields)
    again = client.receipt(**fields)
    assert again.status_code == 200
    assert again.json["terminated"] == first.json["terminated"] == [task["obligation_receipt_id"]]


def test_receipt_id_reuse_with_different_content_is_409(client):
    task = client.create_task()
    receipt_id = str(uuid.uuid4())
    client.receipt(type="task.failure", task_id=task["task_id"], receipt_id=receipt_id)
    result = client.receipt(
        type="task.failure", task_id=task["task_id"], receipt_id=receipt_id, body={"x": 1}
    )
    assert result.status_code == 409
    assert result.json["code"] == "idempotency_conflict"
    assert result.json["field"] == "receipt_id"


# Batches and the ledger --------------------------------------------------------------------


def test_receipt_batch_applies_in_order(client):
    task, grant = started_task(client)
    result = client.post(
        "/v1/receipts/batch",
        json={
            "receipts": [
                {"type": "task.started", "task_id": task["task_id"], "lease_id": grant["lease_id"]},
                {
                    "type": "task.progress",
                    "task_id": task["task_id"],
                    "lease_id": grant["lease_id"],
                },
                {
                    "type": "task.success",
                    "task_id": task["task_id"],
                    "lease_id": grant["lease_id"],
                    "parent_receipt_ids": [task["obligation_receipt_id"]],
                    "artifacts": [ARTIFACT],
                },
            ]
        },
    )
    assert result.status_code == 201, result.text
    results = result.json["results"]
    assert [r["receipt"]["type"] for r in results] == [
        "task.started",
        "task.progress",
        "task.success",
    ]
    assert results[2]["terminated"] == [task["obligation_receipt_id"]]


def test_a_receipt_id_repeated_in_one_batch_is_a_replay_of_the_first(client):
    task = client.create_task()
    failure = {
        "type": "task.failure",
        "task_id": task["task_id"],
        "parent_receipt_ids": [task["obligation_receipt_id"]],
        "receipt_id": str(uuid.uuid4()),
    }
    result = client.post("/v1/receipts/batch", json={"receipts": [failure, failure]})
    assert result.status_code == 201, result.text
    first, again = result.json["results"]
    assert again == first
    assert first["terminated"] == [task["obligation_receipt_id"]]
    ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert [r["type"] for r in ledger] == ["task.assigned", "task.failure"]


def test_a_receipt_id_reused_with_other_content_in_one_batch_writes_nothing(client):
    task = client.create_task()
    failure = {"type": "task.failure", "task_id": task["task_id"], "receipt_id": str(uuid.uuid4())}
    result = client.post(
        "/v1/receipts/batch", json={"receipts": [failure, {**failure, "body": {"x": 1}}]}
    )
    assert result.status_code == 409
    assert result.json["field"] == "receipts.1.receipt_id"
    ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert [r["type"] for r in ledger] == ["task.assigned"]


def test_receipt_batch_is_all_or_nothing(client):
    task, grant = started_task(client)
    result = client.post(
        "/v1/receipts/batch",
        json={
            "receipts": [
                {
                    "type": "task.progress",
                    "task_id": task["task_id"],
                    "lease_id": grant["lease_id"],
                },
                {"type": "task.failure", "task_id": str(uuid.uuid4())},
            ]
        },
    )
    assert result.status_code == 404
    assert result.json["field"] == "receipts.1.task_id"
    ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert [r["type"] for r in ledger] == ["task.assigned"]


def test_receipt_batch_over_1000_is_refused(client):
    task = client.create_task()
    receipts = [{"type": "task.failure", "task_id": task["task_id"]}] * 1001
    result = client.post("/v1/receipts/batch", json={"receipts": receipts})
    assert result.status_code == 422


def test_ledger_filters_by_type_prefix_and_task(client):
    task, _ = started_task(client)
    client.receipt(type="task.success", task_id=task["task_id"])  # unlocatable: one anomaly
    anomalies = client.get("/v1/receipts?type=system.anomaly.*").json
    assert [a["type"] for a in anomalies] == ["system.anomaly.locatability_missing"]
    exact = client.get("/v1/receipts?type=task.success").json
    assert len(exact) == 1
    everything = client.get(f"/v1/receipts?task_id={task['task_id']}").json
    assert [r["type"] for r in everything] == [
        "task.assigned",
        "task.success",
        "system.anomaly.locatability_missing",
    ]


def test_ledger_pagination_follows_link_next(client):
    task = client.create_task()
    for _ in range(4):
        client.receipt(type="task.failure", task_id=task["task_id"])
    seen = [r["receipt_id"] for r in follow_pages(client, "/v1/receipts?limit=2")]
    assert len(seen) == 5 and len(set(seen)) == 5
    everything = client.get("/v1/receipts").json
    assert [r["receipt_id"] for r in everything] == seen


def test_ledger_since_and_until(client):
    task = client.create_task()
    created = client.get(f"/v1/tasks/{task['task_id']}").json["created_at"]
    assert client.get(f"/v1/receipts?since={created}").json
    assert client.get(f"/v1/receipts?until={created}").json == []
    bad = client.get("/v1/receipts?since=yesterday")
    assert bad.status_code == 422 and bad.json["field"] == "since"


def test_receipts_are_returned_with_every_stored_field(client):
    task = client.create_task()
    result = client.receipt(
        type="task.failure",
        task_id=task["task_id"],
        body={"error": "x"},
        artifacts=[ARTIFACT],
        delivery_proof={"k": "v"},
    )
    stored = client.get(f"/v1/receipts/{result.json['receipt']['receipt_id']}").json
    assert stored == result.json["receipt"]
    assert set(stored) == {
        "receipt_id", "type", "task_id", "from_principal", "to_principal", "lease_id",
        "parent_receipt_ids", "body", "artifacts", "delivery_proof", "created_at",
    }  # fmt: skip
    assert stored["created_at"].endswith("Z")


def success_under(grant):
    """A locatable task.success under a grant's lease, naming its task's obligation."""
    return {
        "type": "task.success",
        "task_id": grant["task"]["task_id"],
        "lease_id": grant["lease_id"],
        "parent_receipt_ids": [grant["task"]["obligation_receipt_id"]],
        "artifacts": [ARTIFACT],
    }


def test_a_batch_of_successes_on_many_tasks_closes_every_obligation(client):
    tasks = [client.create_task(type="many") for _ in range(4)]
    grants = client.claim(types=["many"], max_tasks=4)
    receipts = [success_under(grant) for grant in grants]
    result = client.post("/v1/receipts/batch", json={"receipts": receipts})
    assert result.status_code == 201, result.text
    results = result.json["results"]
    assert [r["receipt"]["task_id"] for r in results] == [g["task"]["task_id"] for g in grants]
    assert [r["terminated"] for r in results] == [
        [g["task"]["obligation_receipt_id"]] for g in grants
    ]
    for written in results:
        stored = client.get(f"/v1/receipts/{written['receipt']['receipt_id']}").json
        assert stored == written["receipt"]
    assert open_ids(client).isdisjoint(t["obligation_receipt_id"] for t in tasks)
    for task in tasks:
        after = client.get(f"/v1/tasks/{task['task_id']}").json
        assert (after["state"], after["lease"]) == ("COMPLETED", None)


@pytest.mark.parametrize(
    ("broken", "status", "field"),
    [
        ("stale lease", 404, "receipts.1.lease_id"),
        ("missing parent", 422, "receipts.1.parent_receipt_ids"),
        ("same task twice", 409, "receipts.2.lease_id"),
        ("body too large", 422, "receipts.1.body"),
    ],
)
def test_one_unwritable_success_in_a_batch_writes_none_of_them(client, broken, status, field):
    tasks = [client.create_task(type="whole") for _ in range(3)]
    grants = client.claim(types=["whole"], max_tasks=3)
    receipts = [success_under(grant) for grant in grants]
    if broken == "stale lease":
        receipts[1]["lease_id"] = str(uuid.uuid4())
    elif broken == "missing parent":
        receipts[1]["parent_receipt_ids"].append(str(uuid.uuid4()))
    elif broken == "body too large":
        receipts[1]["body"] = {"blob": "x" * (64 * 1024)}
    else:
        receipts[2] = {**receipts[0], "artifacts": [{"uri": "s3://results/2.json"}]}
    result = client.post("/v1/receipts/batch", json={"receipts": receipts})
    assert (result.status_code, result.json["field"]) == (status, field), result.text
    assert open_ids(client) >= {t["obligation_receipt_id"] for t in tasks}
    for task in tasks:
        after = client.get(f"/v1/tasks/{task['task_id']}").json
        assert after["state"] == "ACTIVE"
        ledger = client.get(f"/v1/receipts?task_id={task['task_id']}").json
        assert [r["type"] for r in ledger] == ["task.assigned"]


def written_counts(client):
    """asyncgate_receipts_written_total by type, as /v1/metrics shows it."""
    return {
        sample.labels["type"]: sample.value
        for family in text_string_to_metric_families(client.get("/v1/metrics").text)
        for sample in family.samples
        if sample.name == "asyncgate_receipts_written_total"
    }


def test_written_receipts_are_counted_by_type_once_each_and_replays_not_at_all(client):
    before = written_counts(client)
    task, grant = started_task(client)
    progress = {"type": "task.progress", "task_id": task["task_id"], "lease_id": grant["lease_id"]}
    assert client.receipt(**progress).status_code == 201
    failure = {
        "type": "task.failure", "task_id": task["task_id"], "receipt_id": str(uuid.uuid4()),
        "parent_receipt_ids": [task["obligation_receipt_id"]],
    }  # fmt: skip
    batch = {"receipts": [progress, {**progress, "body": {"pct": 9}}, failure]}
    assert client.post("/v1/receipts/batch", json=batch).status_code == 201
    assert client.receipt(**failure).status_code == 200  # a replay: nothing new is written
    after = written_counts(client)
    grown = {kind: after[kind] - before.get(kind, 0.0) for kind in after}
    assert grown == {
        "task.started": 0.0, "task.progress": 3.0, "task.success": 0.0,
        "task.failure": 1.0, "task.cancelled": 0.0,
    }  # fmt: skip
