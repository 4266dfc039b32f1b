"""Schemathesis hooks shared by the in-process contract suite and the CLI.

The CLI loads them with ``SCHEMATHESIS_HOOKS=tests/contract_hooks.py``; tests/test_contract.py
imports this module. Both hooks are as narrow as they can be, and each says why.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Claims are sent with wait_seconds 0: a valid long poll (up to 20 s) would only burn time.

    An empty claim then answers at once instead of holding the connection, which would also trip
    the 10 s max_response_time check. Invalid values are left as generated, so negative data
    keeps being checked.
    """
    body = case.body
    if case.operation.label == "POST /v1/leases" and isinstance(body, dict):
        wait = body.get("wait_seconds")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 20:
            body["wait_seconds"] = 0


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure except schema-valid input refused by a rule JSON Schema cannot state.

    Only positive_data_acceptance, only 422, and only three rules that need the database or two
    fields at once, each documented in openapi.yaml: ``after`` is a well-formed UUID that names
    no item of this listing in this tenant (an unknown cursor); ``until`` is earlier than
    ``since``; a receipt names parent receipts that do not exist in this tenant (SPEC: 422).
    """
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    problem = response.json()
    field, code = problem.get("field") or "", problem.get("code")
    query = case.query or {}
    if field == "after" and "after" in query:
        return False
    if field == "until" and "since" in query and "until" in query:
        return False
    return not (field.endswith("parent_receipt_ids") and code == "unknown_parent")
