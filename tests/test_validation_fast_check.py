"""The fast check (jsonschema-rs) and fastjsonschema agree on every request schema.

``validate`` trusts jsonschema-rs's "valid" and fills the declared defaults itself; only an
invalid body goes to fastjsonschema, which names the field at fault. So the two must agree on
what is valid, and the defaults filled must be fastjsonschema's. Hypothesis mutates valid
bodies (values swapped for any JSON, keys dropped or added, strings near the patterns) and
compares the two on each.
"""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

import fastjsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncgate import PROJECT_ROOT
from asyncgate.validation import (
    REQUEST_SCHEMAS,
    _defaults,
    _is_valid,
    prepare,
    validate,
    validator,
)

ID = str(uuid.uuid4())
RECEIPT = {
    "type": "task.success",
    "task_id": ID,
    "lease_id": ID,
    "parent_receipt_ids": [ID],
    "artifacts": [{"uri": "s3://b/k", "media_type": "a/b", "digest": "d", "size_bytes": 3}],
    "delivery_proof": {"k": "v"},
    "body": {"a": [1, {"b": None}]},
    "receipt_id": ID,
}
TASK = {"type": "t", "payload": {"x": 1}, "principal": "p:1", "priority": 5,
        "idempotency_key": "k"}  # fmt: skip
VALID_BODIES: dict[str, Any] = {
    "task-create.json": TASK,
    "task-batch-create.json": {"tasks": [TASK, {"type": "u"}]},
    "receipt-create.json": RECEIPT,
    "receipt-batch-create.json": {"receipts": [RECEIPT, {"type": "task.progress",
                                                         "task_id": ID, "lease_id": ID}]},
    "lease-claim.json": {"worker": "w:1", "types": ["t"], "max_tasks": 3, "ttl_seconds": 60,
                         "wait_seconds": 1.5},
    "lease-renew.json": {"ttl_seconds": 60},
}  # fmt: skip

# Strings near what the schemas test: UUIDs in every case and length, NUL, edges of lengths.
near_strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [ID, ID.upper(), ID[:-1], ID + "0", ID.replace("-", ""), f" {ID}", f"{ID}\n", "",
         "\x00", "a\x00", "x" * 255, "x" * 256, "task.progress", "task.started", "task.assigned",
         "system.anomaly.x", "p:1", "s3://b/k"]
    ),
)  # fmt: skip
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0, 1, -1, 100, 101, 3600, 3601, 20, 20.0, 20.5, 1.0, 2**31, -(2**31) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, near_strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(near_strings, inner, max_size=3),
    max_leaves=6,
)


def _containers(value: Any) -> list[Any]:
    found = []
    if isinstance(value, dict | list):
        found.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            found.extend(_containers(child))
    return found


@st.composite
def mutated(draw: st.DrawFn, schema: str) -> Any:
    body = copy.deepcopy(VALID_BODIES[schema])
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        target = draw(st.sampled_from(_containers(body)))
        if isinstance(target, dict):
            keys = sorted(target)
            action = draw(st.sampled_from(["set", "drop", "add"] if keys else ["add"]))
            if action == "drop":
                del target[draw(st.sampled_from(keys))]
            else:
                key = draw(st.sampled_from(keys)) if action == "set" else draw(near_strings)
                target[key] = draw(json_values)
        elif target:
            target[draw(st.integers(min_value=0, max_value=len(target) - 1))] = draw(json_values)
        else:
            target.append(draw(json_values))
    return body


def fastjsonschema_result(schema: str, body: Any) -> Any:
    try:
        return validator(schema)(body)
    except fastjsonschema.JsonSchemaValueException:
        return "invalid"


@pytest.mark.parametrize("schema", sorted(VALID_BODIES))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_both_validators_agree_and_fill_the_same_defaults(schema: str, data: st.DataObject) -> None:
    body = data.draw(mutated(schema))
    expected = fastjsonschema_result(schema, copy.deepcopy(body))
    assert _is_valid(schema)(copy.deepcopy(body)) == (expected != "invalid"), body
    if expected != "invalid":
        assert validate(schema, copy.deepcopy(body)) == expected


def test_defaults_are_filled_afresh_for_each_body() -> None:
    first = validate("receipt-create.json", {"type": "task.failure", "task_id": ID})
    assert (first["parent_receipt_ids"], first["body"], first["artifacts"]) == ([], {}, [])
    first["artifacts"].append("changed")
    second = validate("receipt-create.json", {"type": "task.failure", "task_id": ID})
    assert second["artifacts"] == []
    claim = validate("lease-claim.json", {"worker": "w:1"})
    assert (claim["max_tasks"], claim["wait_seconds"]) == (1, 0)
    batch = validate("task-batch-create.json", {"tasks": [{"type": "a"}, {"type": "b"}]})
    assert [(t["payload"], t["priority"]) for t in batch["tasks"]] == [({}, 0), ({}, 0)]


def test_every_schema_the_resources_validate_against_is_compiled_at_startup() -> None:
    named = set()
    for source in (PROJECT_ROOT / "asyncgate" / "resources").glob("*.py"):
        named |= set(re.findall(r'"([a-z-]+\.json)"', source.read_text()))
    assert named == set(REQUEST_SCHEMAS) == set(VALID_BODIES)  # each one compared above
    for cached in (validator, _is_valid, _defaults):
        cached.cache_clear()
    prepare()
    for cached in (validator, _is_valid, _defaults):
        assert cached.cache_info().currsize == len(REQUEST_SCHEMAS)
