"""The termination truth table, as data, and the pure functions that apply it.

Nothing else in AsyncGate decides whether a receipt terminates an obligation.
No I/O happens here: the ledger brings the database evidence (which parents exist,
which of them is the task's obligation and whether it is open) and this module decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

OBLIGATION = "task.assigned"
ANOMALY_PREFIX = "system.anomaly."
LOCATABILITY_MISSING = "system.anomaly.locatability_missing"
LEASE_EXPIRED = "system.anomaly.lease_expired"


class Terminates(Enum):
    NEVER = "never"
    ALWAYS = "always"
    IF_LOCATABLE = "if_locatable"


@dataclass(frozen=True, slots=True)
class Rule:
    client_may_write: bool
    terminates: Terminates
    requires_lease: bool
    # The task state this receipt moves a non-terminal task to (None: unchanged).
    next_state: str | None


TRUTH_TABLE: Mapping[str, Rule] = {
    OBLIGATION: Rule(False, Terminates.NEVER, False, None),
    "task.started": Rule(True, Terminates.NEVER, True, None),
    "task.progress": Rule(True, Terminates.NEVER, True, None),
    "task.success": Rule(True, Terminates.IF_LOCATABLE, False, "COMPLETED"),
    "task.failure": Rule(True, Terminates.ALWAYS, False, "FAILED"),
    "task.cancelled": Rule(True, Terminates.ALWAYS, False, "CANCELLED"),
}
# system.anomaly.<name>: written by AsyncGate only, never terminates.
ANOMALY_RULE = Rule(False, Terminates.NEVER, False, None)

CLIENT_TYPES = tuple(name for name, rule in TRUTH_TABLE.items() if rule.client_may_write)
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


def rule_for(receipt_type: str) -> Rule | None:
    """The rule for a receipt type, or ``None`` if the type is unknown."""
    if receipt_type.startswith(ANOMALY_PREFIX) and len(receipt_type) > len(ANOMALY_PREFIX):
        return ANOMALY_RULE
    return TRUTH_TABLE.get(receipt_type)


def is_locatable(artifacts: Sequence[Any] | None, delivery_proof: Mapping[str, Any] | None) -> bool:
    """Evidence is an artifact or a non-empty delivery proof; ``[]`` and ``{}`` are not."""
    return bool(artifacts) or bool(delivery_proof)


class Decision(NamedTuple):
    """Immutable, as a frozen dataclass would be, for half its construction cost: one
    is made per receipt written."""

    parent_receipt_ids: list[str]
    stripped_parent_receipt_ids: list[str]
    # Whether the receipt closes the open obligations among its parents.
    closes_named_obligations: bool
    # Anomaly to write in the same transaction, if any.
    anomaly: str | None


def decide(
    rule: Rule,
    parent_ids: Sequence[str],
    artifacts: Sequence[Any] | None,
    delivery_proof: Mapping[str, Any] | None,
) -> Decision:
    """Decide what a client receipt does to the obligations it names.

    ``parent_ids`` must already be known to exist in the tenant. A terminating receipt closes
    every open obligation (``task.assigned`` receipt) among them, whichever task it belongs
    to; every other parent is a causality link. The database says which parents those are.
    """
    if rule.terminates is Terminates.IF_LOCATABLE and not is_locatable(artifacts, delivery_proof):
        # Stored, but unlinked, so nothing closes; the anomaly names what was stripped.
        return Decision([], list(parent_ids), False, LOCATABILITY_MISSING)
    closes = rule.terminates is not Terminates.NEVER and bool(parent_ids)
    return Decision(list(parent_ids), [], closes, None)


def next_state(rule: Rule, current_state: str) -> str:
    """The task state after a receipt with ``rule``; terminal states never change."""
    if rule.next_state is None or current_state in TERMINAL_STATES:
        return current_state
    return rule.next_state
