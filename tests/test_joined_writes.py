"""Concurrent requests whose writes share one statement (coalesce.py) answer as if alone.

Each test sends many requests at once to one app, on both dialects, and checks every answer
and the ledger afterwards; the metrics show that writes were in fact joined, so the joined
statements, not only the one-request path, are what passed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import falcon.testing
import pytest
from conftest import Tenants, app_settings
from test_fast_paths import success

from asyncgate.app import create_app
from asyncgate.ledger import Ledger
from asyncgate.metrics import Metrics
from asyncgate.settings import Settings
from asyncgate.storage import StorageUnavailable, TransientConflict, UniqueViolation


class App:
    def __init__(self, conductor: falcon.testing.ASGIConductor, key: str, postgres: bool) -> None:
        self.conductor = conductor
        self.postgres = postgres
        self.headers = {"Authorization": f"Bearer {key}"}

    async def post(self, path: str, body: Any) -> Any:
        return await self.conductor.simulate_post(path, json=body, headers=self.headers)

    async def get(self, path: str) -> Any:
        return await self.conductor.simulate_get(path, headers=self.headers)

    async def all_at_once(self, path: str, bodies: list[Any]) -> list[Any]:
        return await asyncio.gather(*(self.post(path, body) for body in bodies))

    async def largest_join(self, kind: str) -> int:
        """The most requests that shared one statement of ``kind``, from /v1/metrics."""
        text = (await self.get("/v1/metrics")).text
        largest = 0
        pattern = rf'asyncgate_joined_requests_bucket{{kind="{kind}",le="([0-9.]+)"}} ([0-9.]+)'
        below = 0.0
        for bound, count in re.findall(pattern, text):
            if float(count) > below:
                largest = int(float(bound))
            below = float(count)
        return largest

    async def leased_tasks(self, count: int) -> list[dict[str, Any]]:
        kind = f"t-{uuid.uuid4().hex[:8]}"
        created = await self.post("/v1/tasks/batch", {"tasks": [{"type": kind}] * count})
        assert created.status_code == 201, created.text
        claimed = await self.post(
            "/v1/leases", {"worker": "worker:w", "types": [kind], "max_tasks": count}
        )
        assert claimed.status_code == 200 and len(claimed.json) == count, claimed.text
        return claimed.json


@pytest.fixture
async def app(database_url: str, tenants: Tenants) -> AsyncIterator[App]:
    async with falcon.testing.ASGIConductor(
        create_app(app_settings(database_url, tenants))
    ) as conductor:
        yield App(conductor, tenants.keys["a"], database_url.startswith("postgres"))


def progress(grant: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "type": "task.progress",
        "task_id": grant["task"]["task_id"],
        "lease_id": grant["lease_id"],
        "body": {"percent": 50},
        **fields,
    }


@pytest.mark.anyio
async def test_concurrent_progress_receipts_answer_as_if_alone(app: App) -> None:
    grants = await app.leased_tasks(10)
    released = grants.pop()
    given_up = await app.conductor.simulate_delete(
        f"/v1/leases/{released['lease_id']}", headers=app.headers
    )
    assert given_up.status_code == 204
    shared_id, reused_id = str(uuid.uuid4()), str(uuid.uuid4())
    bodies = [progress(grant) for grant in grants for _ in range(3)]
    bodies += [progress(released)] * 2  # lease given up: 409 lease_lost
    bodies += [progress(grants[0], receipt_id=shared_id)] * 2  # same content: 201, then 200
    bodies += [
        progress(grants[1], receipt_id=reused_id),
        progress(grants[2], receipt_id=reused_id),  # other content: one of the two is 409
    ]
    answers = await app.all_at_once("/v1/receipts", bodies)

    assert [a.status_code for a in answers[:27]] == [201] * 27
    assert len({a.json["receipt"]["receipt_id"] for a in answers[:27]}) == 27
    for answer, body in zip(answers[:27], bodies, strict=False):
        assert answer.json["receipt"]["task_id"] == body["task_id"]
        assert answer.json["terminated"] == []
    assert [a.status_code for a in answers[27:29]] == [409, 409]
    assert {a.json["code"] for a in answers[27:29]} == {"lease_lost"}
    assert sorted(a.status_code for a in answers[29:31]) == [200, 201]
    assert answers[29].json["receipt"] == answers[30].json["receipt"]
    assert sorted(a.status_code for a in answers[31:33]) == [201, 409]
    # Each answer shows the receipt as stored: with two contents under one receipt_id, the
    # 201 goes to the one the statement wrote.
    for answer in answers:
        if answer.status_code in (200, 201):
            receipt = answer.json["receipt"]
            stored = await app.get(f"/v1/receipts/{receipt['receipt_id']}")
            assert stored.json == receipt

    written = 0
    for grant in grants + [released]:
        listed = await app.get(f"/v1/receipts?task_id={grant['task']['task_id']}&limit=100")
        written += sum(1 for receipt in listed.json if receipt["type"] == "task.progress")
    assert written == 27 + 1 + 1  # the released lease's two wrote nothing
    assert await app.largest_join("append") > 1


@pytest.mark.anyio
async def test_tenants_sharing_a_statement_never_reach_each_other(
    app: App, tenants: Tenants
) -> None:
    other = App(app.conductor, tenants.keys["b"], app.postgres)
    mine, theirs = await app.leased_tasks(6), await other.leased_tasks(6)
    shared_id = str(uuid.uuid4())  # receipt ids are per tenant: both may use it
    bodies = [(app, progress(grant)) for grant in mine]
    bodies += [(other, progress(grant)) for grant in theirs]
    bodies += [(other, progress(grant)) for grant in mine[:3]]  # a's task and lease: 404
    bodies += [(app, progress(mine[3], receipt_id=shared_id))]
    bodies += [(other, progress(theirs[3], receipt_id=shared_id))]
    answers = await asyncio.gather(*(client.post("/v1/receipts", body) for client, body in bodies))

    assert [a.status_code for a in answers[:12]] == [201] * 12
    assert [a.status_code for a in answers[12:15]] == [404] * 3
    assert [a.status_code for a in answers[15:]] == [201, 201]
    assert answers[15].json["receipt"]["task_id"] == mine[3]["task"]["task_id"]
    assert answers[16].json["receipt"]["task_id"] == theirs[3]["task"]["task_id"]
    for client, grants, strangers in ((app, mine, theirs), (other, theirs, mine)):
        seen = {r["task_id"] for r in (await client.get("/v1/receipts?limit=500")).json}
        assert {grant["task"]["task_id"] for grant in grants} <= seen
        assert not seen & {grant["task"]["task_id"] for grant in strangers}
    assert await app.largest_join("append") > 1


@pytest.mark.anyio
async def test_concurrent_terminal_receipts_close_each_obligation_once(app: App) -> None:
    grants = await app.leased_tasks(12)
    bodies = [success(grant) for grant in grants]
    bodies.append(success(grants[0], type="task.failure", artifacts=[]))  # second terminal
    answers = await app.all_at_once("/v1/receipts", bodies)

    assert [a.status_code for a in answers[1:12]] == [201] * 11
    for answer, grant in zip(answers[1:12], grants[1:], strict=True):
        assert answer.json["terminated"] == [grant["task"]["obligation_receipt_id"]]
    # Two terminal receipts for one task under one lease: exactly one is written.
    first, second = answers[0], answers[12]
    assert sorted((first.status_code, second.status_code)) == [201, 409]
    winner = first if first.status_code == 201 else second
    assert winner.json["terminated"] == [grants[0]["task"]["obligation_receipt_id"]]
    for answer in answers:  # each written receipt answered as stored
        if answer.status_code == 201:
            receipt = answer.json["receipt"]
            assert (await app.get(f"/v1/receipts/{receipt['receipt_id']}")).json == receipt
    if app.postgres:  # settle_under_lease is PostgreSQL's
        assert await app.largest_join("settle") > 1

    open_now = await app.get("/v1/obligations/open")
    still_open = {row["receipt_id"] for row in open_now.json}
    assert not still_open & {grant["task"]["obligation_receipt_id"] for grant in grants}
    for grant in grants:
        task = (await app.get(f"/v1/tasks/{grant['task']['task_id']}")).json
        assert task["lease"] is None and task["obligation_open"] is False
        assert task["state"] in ("COMPLETED", "FAILED")


@pytest.mark.anyio
async def test_concurrent_claims_never_share_a_task(app: App) -> None:
    kind = f"t-{uuid.uuid4().hex[:8]}"
    tasks = [{"type": kind, "priority": index % 3} for index in range(30)]
    assert (await app.post("/v1/tasks/batch", {"tasks": tasks})).status_code == 201
    claims = [{"worker": f"worker:{n}", "types": [kind], "max_tasks": 2} for n in range(20)]
    answers = await app.all_at_once("/v1/leases", claims)

    assert all(answer.status_code == 200 for answer in answers)
    granted = [grant for answer in answers for grant in answer.json]
    assert len(granted) == 30
    assert len({grant["task"]["task_id"] for grant in granted}) == 30
    assert len({grant["lease_id"] for grant in granted}) == 30
    for answer, claim in zip(answers, claims, strict=True):
        assert len(answer.json) <= 2
        priorities = [grant["task"]["priority"] for grant in answer.json]
        assert priorities == sorted(priorities, reverse=True)
        for grant in answer.json:
            task = (await app.get(f"/v1/tasks/{grant['task']['task_id']}")).json
            assert task["lease"]["lease_id"] == grant["lease_id"]
            assert task["lease"]["worker"] == claim["worker"]


@pytest.mark.anyio
async def test_concurrent_creates_each_get_their_own_task(app: App) -> None:
    bodies = [{"type": "joined", "payload": {"n": n}, "priority": n % 5} for n in range(25)]
    answers = await app.all_at_once("/v1/tasks", bodies)
    assert [answer.status_code for answer in answers] == [201] * 25
    assert len({answer.json["task_id"] for answer in answers}) == 25
    for answer, body in zip(answers, bodies, strict=True):
        stored = (await app.get(f"/v1/tasks/{answer.json['task_id']}")).json
        assert (stored["payload"], stored["priority"]) == (body["payload"], body["priority"])
        obligation = await app.get(f"/v1/receipts/{stored['obligation_receipt_id']}")
        assert obligation.status_code == 200
        assert obligation.json["type"] == "task.assigned"
    assert await app.largest_join("create") > 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "alone", "joined"),
    [
        (RuntimeError("a row the database refused"), "raises", None),
        (UniqueViolation("taken"), None, None),
        (TransientConflict("deadlock detected"), None, None),
        (StorageUnavailable("PostgreSQL is unreachable"), "raises", "raises"),
    ],
)
async def test_a_failed_joined_statement_leaves_each_request_to_its_own_path(
    error: Exception, alone: str | None, joined: str | None
) -> None:
    """Joined, a statement's failure must not become every request's answer: each request
    then takes its own path (None), which finds its own error. Alone, an unexpected error is
    the request's own; an unreachable database is everyone's (503)."""
    ledger = Ledger(None, Settings(), Metrics(), emit=None)  # type: ignore[arg-type]

    async def failing() -> None:
        raise error

    for items, expected in ((1, alone), (3, joined)):
        if expected == "raises":
            with pytest.raises(type(error)):
                await ledger._joined("append", items, failing)
        else:
            assert await ledger._joined("append", items, failing) is None
