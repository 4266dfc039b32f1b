"""Ledger invariants under random interleavings (hypothesis stateful testing, both dialects).

The server clock is replaced by one the state machine advances, so leases expire
without sleeping. After every step:
- a task is ACTIVE under at most one current lease, and only while it is unexpired;
- lease_generation never decreases;
- an obligation is open if and only if no terminating receipt names it;
- receipts are never modified.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from asyncgate import ledger as ledger_module
from asyncgate.settings import hash_key

TERMINATING = {"task.failure", "task.cancelled"}
ARTIFACT = {"uri": "s3://x/y"}


def closes(receipt: dict, obligation: str) -> bool:
    if obligation not in receipt["parent_receipt_ids"]:
        return False
    if receipt["type"] in TERMINATING:
        return True
    return receipt["type"] == "task.success" and bool(
        receipt["artifacts"] or receipt["delivery_proof"]
    )


class Clock:
    """Ticks 1 ms per reading, so creation order (and so claim order) is deterministic."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


EXAMPLES = 40


def test_ledger_invariants_hold_under_random_interleavings(make_client, monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(ledger_module, "utcnow", clock)
    # Every example runs in a tenant of its own, so replays during shrinking see the same world.
    keys = [secrets.token_urlsafe(16) for _ in range(EXAMPLES * 10)]
    suffix = uuid.uuid4().hex[:8]
    keys_file = tmp_path / "invariant-keys"
    keys_file.write_text(
        "".join(f"{hash_key(k)} inv-{suffix}-{i} service:inv\n" for i, k in enumerate(keys))
    )
    app_client = make_client(API_KEYS_FILE=str(keys_file))
    unused_keys = iter(keys)

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            nonlocal client
            client = app_client.as_key(next(unused_keys))
            self.tasks: list[dict] = []
            self.leases: list[dict] = []  # every grant ever made
            self.generations: dict[str, int] = {}
            self.receipts: dict[str, dict] = {}

        @rule(priority=st.integers(-3, 3))
        def create(self, priority: int) -> None:
            self.tasks.append(client.create_task(priority=priority))

        @rule(max_tasks=st.integers(1, 3), ttl=st.integers(1, 30))
        def claim(self, max_tasks: int, ttl: int) -> None:
            self.leases += client.claim(max_tasks=max_tasks, ttl_seconds=ttl)

        @rule(seconds=st.integers(1, 40))
        def advance_time(self, seconds: int) -> None:
            clock.now += timedelta(seconds=seconds)

        @precondition(lambda self: self.leases)
        @rule(data=st.data(), kind=st.sampled_from(["task.started", "task.progress"]))
        def report(self, data: st.DataObject, kind: str) -> None:
            grant = data.draw(st.sampled_from(self.leases))
            result = client.receipt(
                type=kind, task_id=grant["task"]["task_id"], lease_id=grant["lease_id"]
            )
            assert result.status_code in (201, 409), result.text

        @precondition(lambda self: self.tasks)
        @rule(
            data=st.data(),
            kind=st.sampled_from(["task.success", "task.failure", "task.cancelled"]),
            evidence=st.sampled_from([{}, {"artifacts": []}, {"artifacts": [ARTIFACT]}]),
            names_obligation=st.booleans(),
            use_lease=st.booleans(),
        )
        def finish(self, data, kind, evidence, names_obligation, use_lease) -> None:
            task = data.draw(st.sampled_from(self.tasks))
            fields = {"type": kind, "task_id": task["task_id"], **evidence}
            if names_obligation:
                fields["parent_receipt_ids"] = [task["obligation_receipt_id"]]
            mine = [g for g in self.leases if g["task"]["task_id"] == task["task_id"]]
            if use_lease and mine:
                fields["lease_id"] = mine[-1]["lease_id"]
            result = client.receipt(**fields)
            assert result.status_code in (201, 409), result.text

        @precondition(lambda self: self.leases)
        @rule(data=st.data(), release=st.booleans())
        def renew_or_release(self, data, release: bool) -> None:
            grant = data.draw(st.sampled_from(self.leases))
            if release:
                result = client.delete(f"/v1/leases/{grant['lease_id']}")
                assert result.status_code in (204, 409)
            else:
                result = client.post(f"/v1/leases/{grant['lease_id']}/renew")
                assert result.status_code in (200, 409)

        @invariant()
        def one_current_lease_and_generations_grow(self) -> None:
            for task in self.tasks:
                view = client.get(f"/v1/tasks/{task['task_id']}").json
                generation = view["lease_generation"]
                assert generation >= self.generations.get(task["task_id"], 0)
                self.generations[task["task_id"]] = generation
                if view["state"] == "ACTIVE":
                    lease = view["lease"]
                    assert lease is not None
                    assert lease["expires_at"] > clock.now.isoformat().replace("+00:00", "Z")
                    grants = [g for g in self.leases if g["lease_id"] == lease["lease_id"]]
                    assert len(grants) == 1
                    assert lease["lease_generation"] == generation
                else:
                    assert view["lease"] is None

        @invariant()
        def obligations_open_iff_no_terminating_receipt(self) -> None:
            open_ids = {o["receipt_id"] for o in client.get("/v1/obligations/open").json}
            for task in self.tasks:
                ledger = client.get(f"/v1/receipts?task_id={task['task_id']}&limit=1000").json
                obligation = task["obligation_receipt_id"]
                closed = any(closes(r, obligation) for r in ledger)
                assert (obligation in open_ids) is (not closed)
                view = client.get(f"/v1/tasks/{task['task_id']}").json
                assert view["obligation_open"] is (not closed)

        @invariant()
        def receipts_are_never_modified(self) -> None:
            for receipt in client.get("/v1/receipts?limit=1000").json:
                first = self.receipts.setdefault(receipt["receipt_id"], receipt)
                assert receipt == first

    client = app_client
    LedgerMachine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=15,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    LedgerMachine.TestCase().runTest()
