"""PostgreSQL's one-statement fast paths write only in the common case, and nothing otherwise.

The behavioural tests (both dialects) show that answers are the same whichever path a request
takes; these show each fast path's own contract: when one of its conditions fails it writes
nothing at all and returns None, so the general path can decide and answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from asyncgate_postgres import PostgresDialect, conninfo_from_url

from asyncgate import leases, receipts
from asyncgate.errors import Problem
from asyncgate.ids import new_id, utcnow
from asyncgate.ledger import Ledger
from asyncgate.metrics import Metrics
from asyncgate.settings import Identity, Settings

ARTIFACTS = [{"uri": "s3://bucket/result.json"}]


@pytest.fixture
async def ledger(pg_database: str) -> AsyncIterator[Ledger]:
    dialect = PostgresDialect(conninfo_from_url(pg_database), 1, 4)
    await dialect.open()
    await dialect.migrate()

    async def emit(anomalies: list[dict[str, Any]], tenant: str) -> None:
        return None

    try:
        yield Ledger(dialect, Settings(), Metrics(), emit)
    finally:
        await dialect.close()


@pytest.fixture
def identity() -> Identity:
    return Identity(f"fast-{uuid.uuid4().hex[:10]}", "service:fast")


def count(database_url: str, sql: str, *params: Any) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchone()[0]


async def leased_task(ledger: Ledger, identity: Identity, ttl: int = 60) -> dict[str, Any]:
    [(task, _)] = await ledger.create_tasks(identity, [spec()], batch=False)
    [grant] = await ledger.claim(identity, "worker:w", [task["type"]], 1, ttl, 0)
    return grant


def spec(**fields: Any) -> dict[str, Any]:
    return {"type": f"t-{uuid.uuid4().hex[:8]}", "payload": {}, "priority": 0, **fields}


def success(grant: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "type": "task.success",
        "task_id": grant["task"]["task_id"],
        "lease_id": grant["lease_id"],
        "parent_receipt_ids": [grant["task"]["obligation_receipt_id"]],
        "body": {},
        "artifacts": ARTIFACTS,
        "delivery_proof": None,
        **fields,
    }


async def settle(ledger: Ledger, identity: Identity, receipt: dict[str, Any]) -> Any:
    row = receipts.settle_row(identity, receipt)
    assert row is not None
    sent = [row]
    now = utcnow()
    async with ledger.dialect.autocommit() as tx:
        rows = await tx.many_returning("settle_under_lease", sent, now=now)
    [row] = receipts.merge_written(sent, rows, now)
    return None if row is None else receipts.written_at_once(row)


@pytest.mark.anyio
async def test_settle_writes_the_receipt_ends_the_lease_and_closes_the_obligation(
    ledger: Ledger, identity: Identity, pg_database: str
) -> None:
    grant = await leased_task(ledger, identity)
    result = await settle(ledger, identity, success(grant))
    assert result is not None
    assert result.terminated == [grant["task"]["obligation_receipt_id"]]
    task = await ledger.get_task(identity, grant["task"]["task_id"])
    assert (task["state"], task["obligation_open"], task["lease"]) == ("COMPLETED", False, None)
    # The lease is over with its task: renewing it is refused. Its record is not written
    # again (released_at records releases only), so settling costs no lease row version.
    with pytest.raises(Problem) as refused:
        await ledger.renew(identity, grant["lease_id"], None)
    assert refused.value.status == 409
    untouched = count(
        pg_database,
        "SELECT count(*) FROM leases WHERE lease_id = %s AND released_at IS NULL",
        grant["lease_id"],
    )
    assert untouched == 1


def ledger_size(database_url: str, identity: Identity) -> int:
    return count(database_url, "SELECT count(*) FROM receipts WHERE tenant = %s", identity.tenant)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "condition", ["stale lease", "missing parent", "another task's obligation", "taken id"]
)
async def test_settle_writes_nothing_when_a_condition_fails(
    ledger: Ledger, identity: Identity, pg_database: str, condition: str
) -> None:
    grant = await leased_task(ledger, identity)
    receipt = success(grant)
    if condition == "stale lease":
        receipt["lease_id"] = new_id()
    elif condition == "missing parent":
        receipt["parent_receipt_ids"] = [*receipt["parent_receipt_ids"], new_id()]
    elif condition == "another task's obligation":
        other = await leased_task(ledger, identity)
        receipt["parent_receipt_ids"] = [
            *receipt["parent_receipt_ids"],
            other["task"]["obligation_receipt_id"],
        ]
    else:
        progress = {**receipt, "type": "task.progress", "parent_receipt_ids": []}
        [written] = await ledger.write_receipts(identity, [progress], batch=False)
        receipt["receipt_id"] = written.receipt["receipt_id"]
    before = ledger_size(pg_database, identity)
    assert await settle(ledger, identity, receipt) is None
    assert ledger_size(pg_database, identity) == before
    task = await ledger.get_task(identity, grant["task"]["task_id"])
    assert (task["state"], task["obligation_open"]) == ("ACTIVE", True)


def test_receipts_with_an_anomaly_no_lease_or_a_refusal_never_take_the_settle_path() -> None:
    grant = {"task": {"task_id": new_id(), "obligation_receipt_id": new_id()}, "lease_id": new_id()}

    def settles(receipt: dict[str, Any]) -> bool:
        return receipts.settle_row(Identity("t", "service:a"), receipt) is not None

    assert settles(success(grant))
    assert settles(success(grant, type="task.failure", artifacts=[]))
    assert not settles(success(grant, artifacts=[]))  # locatability anomaly
    assert not settles(success(grant, lease_id=None))
    assert not settles(success(grant, type="task.progress"))
    # Refused by check_request: the general path answers, naming the field.
    assert not settles(success(grant, body={"blob": "x" * (64 * 1024)}))


@pytest.mark.anyio
async def test_claim_at_once_grants_pending_tasks_in_priority_order(
    ledger: Ledger, identity: Identity
) -> None:
    kind = f"t-{uuid.uuid4().hex[:8]}"
    created = await ledger.create_tasks(
        identity, [spec(type=kind, priority=p) for p in (1, 5, 3)], batch=True
    )
    async with ledger.dialect.autocommit() as tx:
        claimed = await leases.claim_at_once(
            tx, utcnow(), identity.tenant, [kind], [leases.Claim("worker:w", 2, 60)]
        )
    assert claimed is not None
    [grants] = claimed
    assert [g["task"]["priority"] for g in grants] == [5, 3]
    assert {g["task"]["task_id"] for g in grants} < {task["task_id"] for task, _ in created}
    for grant in grants:
        task = await ledger.get_task(identity, grant["task"]["task_id"])
        assert task["lease"]["lease_id"] == grant["lease_id"]
        assert task["lease_generation"] == 1


@pytest.mark.anyio
async def test_claim_at_once_leaves_a_takeover_to_the_general_path(
    ledger: Ledger, identity: Identity, pg_database: str
) -> None:
    grant = await leased_task(ledger, identity, ttl=1)
    later = utcnow() + timedelta(seconds=5)  # the lease has expired by then
    async with ledger.dialect.autocommit() as tx:
        taken = await leases.claim_at_once(
            tx, later, identity.tenant, [grant["task"]["type"]], [leases.Claim("worker:w2", 1, 60)]
        )
    assert taken is None
    # Nothing was written: the old lease is still the task's, and no new lease exists.
    leases_of_task = count(
        pg_database, "SELECT count(*) FROM leases WHERE task_id = %s", grant["task"]["task_id"]
    )
    assert leases_of_task == 1
    current = count(
        pg_database,
        "SELECT count(*) FROM tasks WHERE task_id = %s AND lease_id = %s",
        grant["task"]["task_id"],
        grant["lease_id"],
    )
    assert current == 1


@pytest.mark.anyio
async def test_a_batch_of_settles_is_one_statement_that_writes_all_or_none(
    ledger: Ledger, identity: Identity, pg_database: str
) -> None:
    grants = [await leased_task(ledger, identity) for _ in range(3)]
    batch = [success(grant) for grant in grants]
    rows = ledger._settle_rows(identity, batch)
    assert rows is not None
    stale = ledger._settle_rows(identity, [batch[0], {**batch[1], "lease_id": new_id()}, batch[2]])
    assert stale is not None
    before = ledger_size(pg_database, identity)
    assert await ledger._settle_all_or_none(stale) is None
    assert ledger_size(pg_database, identity) == before
    for grant in grants:
        task = await ledger.get_task(identity, grant["task"]["task_id"])
        assert (task["state"], task["obligation_open"]) == ("ACTIVE", True)

    results = await ledger._settle_all_or_none(rows)
    assert results is not None
    assert [r.receipt["task_id"] for r in results] == [g["task"]["task_id"] for g in grants]
    assert [r.terminated for r in results] == [[g["task"]["obligation_receipt_id"]] for g in grants]
    for result in results:
        # The statement answers with the rows as stored, without reading them back.
        assert await ledger.get_receipt(identity, result.receipt["receipt_id"]) == result.receipt
    assert ledger_size(pg_database, identity) == before + 3


@pytest.mark.anyio
async def test_only_terminating_receipts_on_distinct_tasks_settle_as_one_batch(
    ledger: Ledger, identity: Identity
) -> None:
    grant = {"task": {"task_id": new_id(), "obligation_receipt_id": new_id()}, "lease_id": new_id()}
    other = {"task": {"task_id": new_id(), "obligation_receipt_id": new_id()}, "lease_id": new_id()}
    together = ledger._settle_rows(identity, [success(grant), success(other)])
    assert together is not None and len(together) == 2
    twice = [success(grant), success(grant, receipt_id=new_id())]
    assert ledger._settle_rows(identity, twice) is None
    progress = {**success(other), "type": "task.progress", "parent_receipt_ids": []}
    assert ledger._settle_rows(identity, [success(grant), progress]) is None


@pytest.mark.anyio
async def test_one_receipt_id_on_two_settled_tasks_fails_the_statement_and_writes_nothing(
    ledger: Ledger, identity: Identity, pg_database: str
) -> None:
    # The receipt_id is checked new before the INSERT, which has no ON CONFLICT: a clash the
    # check cannot see (here, inside one statement) fails the whole statement, so no task is
    # settled without its receipt, and every row goes to the general path (None).
    grants = [await leased_task(ledger, identity) for _ in range(2)]
    shared_id = new_id()
    rows = [receipts.settle_row(identity, success(grant, receipt_id=shared_id)) for grant in grants]
    before = ledger_size(pg_database, identity)
    assert await ledger._write_at_once("settle", "settle_under_lease", rows) == [None, None]
    assert ledger_size(pg_database, identity) == before
    for grant in grants:
        task = await ledger.get_task(identity, grant["task"]["task_id"])
        assert (task["state"], task["obligation_open"]) == ("ACTIVE", True)
    # The same rows with ids of their own are written.
    for row in rows:
        row["receipt_id"] = new_id()
    written = await ledger._write_at_once("settle", "settle_under_lease", rows)
    assert [row["receipt_id"] for row in written] == [row["receipt_id"] for row in rows]
