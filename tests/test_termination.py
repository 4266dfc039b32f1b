"""The truth table as data: every row, decided without I/O."""

from __future__ import annotations

import pytest

from asyncgate import termination as t

OBLIGATION = "11111111-1111-4111-8111-111111111111"
OTHER = "22222222-2222-4222-8222-222222222222"
ARTIFACT = [{"uri": "s3://bucket/result.json"}]


@pytest.mark.parametrize(
    ("receipt_type", "client_may_write", "terminates"),
    [
        ("task.assigned", False, t.Terminates.NEVER),
        ("task.started", True, t.Terminates.NEVER),
        ("task.progress", True, t.Terminates.NEVER),
        ("task.success", True, t.Terminates.IF_LOCATABLE),
        ("task.failure", True, t.Terminates.ALWAYS),
        ("task.cancelled", True, t.Terminates.ALWAYS),
        ("system.anomaly.lease_expired", False, t.Terminates.NEVER),
        ("system.anomaly.anything_else", False, t.Terminates.NEVER),
    ],
)
def test_every_row_of_the_truth_table(receipt_type, client_may_write, terminates):
    rule = t.rule_for(receipt_type)
    assert rule is not None
    assert rule.client_may_write is client_may_write
    assert rule.terminates is terminates


@pytest.mark.parametrize("receipt_type", ["task.unknown", "system.anomaly.", "system.other", ""])
def test_unknown_types_have_no_rule(receipt_type):
    assert t.rule_for(receipt_type) is None


@pytest.mark.parametrize(
    ("artifacts", "proof", "locatable"),
    [
        (None, None, False),
        ([], None, False),
        ([], {}, False),
        (None, {}, False),
        (ARTIFACT, None, True),
        ([], {"channel": "email", "message_id": "m-1"}, True),
    ],
)
def test_locatability_needs_an_artifact_or_a_non_empty_proof(artifacts, proof, locatable):
    assert t.is_locatable(artifacts, proof) is locatable


def test_unlocatable_success_strips_parents_and_asks_for_an_anomaly():
    rule = t.rule_for("task.success")
    decision = t.decide(rule, [OBLIGATION, OTHER], [], {})
    assert decision.parent_receipt_ids == []
    assert decision.stripped_parent_receipt_ids == [OBLIGATION, OTHER]
    assert decision.closes_named_obligations is False
    assert decision.anomaly == t.LOCATABILITY_MISSING


def test_unlocatable_success_without_parents_still_asks_for_an_anomaly():
    decision = t.decide(t.rule_for("task.success"), [], None, None)
    assert decision.anomaly == t.LOCATABILITY_MISSING
    assert decision.stripped_parent_receipt_ids == []


def test_locatable_success_closes_the_obligations_it_names():
    decision = t.decide(t.rule_for("task.success"), [OBLIGATION], ARTIFACT, None)
    assert decision.closes_named_obligations is True
    assert decision.parent_receipt_ids == [OBLIGATION]
    assert decision.anomaly is None


@pytest.mark.parametrize("receipt_type", ["task.failure", "task.cancelled"])
def test_failure_and_cancel_terminate_without_evidence(receipt_type):
    decision = t.decide(t.rule_for(receipt_type), [OBLIGATION], [], None)
    assert decision.closes_named_obligations is True


@pytest.mark.parametrize("receipt_type", ["task.started", "task.progress"])
def test_non_terminating_receipts_keep_parents_as_links(receipt_type):
    decision = t.decide(t.rule_for(receipt_type), [OBLIGATION], ARTIFACT, None)
    assert decision.closes_named_obligations is False
    assert decision.parent_receipt_ids == [OBLIGATION]


def test_a_terminating_receipt_without_parents_closes_nothing():
    decision = t.decide(t.rule_for("task.failure"), [], [], None)
    assert decision.closes_named_obligations is False


@pytest.mark.parametrize(
    ("receipt_type", "state", "expected"),
    [
        ("task.success", "ACTIVE", "COMPLETED"),
        ("task.failure", "PENDING", "FAILED"),
        ("task.cancelled", "ACTIVE", "CANCELLED"),
        ("task.progress", "ACTIVE", "ACTIVE"),
        ("task.failure", "COMPLETED", "COMPLETED"),
        ("task.success", "CANCELLED", "CANCELLED"),
    ],
)
def test_state_transitions_and_terminal_states_never_change(receipt_type, state, expected):
    assert t.next_state(t.rule_for(receipt_type), state) == expected
