"""Schemathesis proves openapi.yaml against the running app, in process, on both dialects.

This is the in-process twin of ``schemathesis run … --checks all``: the same engine runs the
examples, coverage, fuzzing and stateful phases with every check, bounded by a fixed seed,
deterministic generation and few examples so it stays fast and reproducible.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

import contract_hooks
import pytest
import schemathesis
import schemathesis.engine
from schemathesis.engine import events
from schemathesis.engine.run import PhaseName
from schemathesis.python import asgi

from asyncgate.app import create_app
from asyncgate.settings import Settings

SEED = 20261130
PHASES = (
    PhaseName.EXAMPLES,
    PhaseName.COVERAGE,
    PhaseName.FUZZING,
    PhaseName.STATEFUL_TESTING,
)
# Importing registers them (globally, as the CLI does with SCHEMATHESIS_HOOKS).
HOOKS = (contract_hooks.before_call, contract_hooks.filter_failure)


def contract_config(key: str) -> schemathesis.Config:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "workers": 1,
            # Nothing is written to .schemathesis/: a run is reproducible from its seed.
            "cache": {"enabled": False},
            "generation": {
                "mode": "all",
                "max-examples": 15,
                "deterministic": True,
                "no-shrink": True,
            },
            "phases": {
                "examples": {"fill-missing": True},
                "stateful": {"max-steps": 12},
            },
            "auth": {"openapi": {"bearerAuth": {"bearer": key}}},
        }
    )
    # Exactly what `--checks all` does, max_response_time (10 s) included.
    config.projects.override.checks.update(included_check_names=["all"])
    return config


@dataclass
class Outcome:
    scenarios: dict[PhaseName, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def report(self) -> str:
        return "\n\n".join([*self.failures, *self.errors])


def run_contract(app: Any, key: str) -> Outcome:
    schema = schemathesis.openapi.from_asgi(
        "/v1/openapi.yaml",
        app,
        config=contract_config(key),
        headers={"Authorization": f"Bearer {key}"},
    )
    outcome = Outcome()
    seen: set[tuple[str, str, str]] = set()
    try:
        for event in schemathesis.engine.from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                outcome.scenarios[event.phase] = outcome.scenarios.get(event.phase, 0) + 1
                for checks in event.recorder.checks.values():
                    for check in checks:
                        info = check.failure_info
                        key = (
                            (event.recorder.label, check.name, info.failure.title) if info else None
                        )
                        if key is None or key in seen:
                            continue
                        seen.add(key)
                        outcome.failures.append(
                            f"[{event.phase.value}] {event.recorder.label} {check.name}: "
                            f"{info.failure.title}\n{info.failure.message}\n{info.code_sample}"
                        )
            elif isinstance(event, events.NonFatalError):
                outcome.errors.append(f"[{event.phase}] {event.label}: {event.info.format()}")
            elif isinstance(event, events.FatalError):
                outcome.errors.append(f"fatal: {event.exception!r}")
    finally:
        asgi.shutdown_lifespans()
    return outcome


@pytest.fixture
def contract_app(database_url: str, tenants: Any) -> Any:
    if (
        database_url.startswith("postgresql")
        and importlib.util.find_spec("asyncgate_postgres") is None
    ):
        pytest.skip("the asyncgate_postgres dialect plugin is not installed")
    env = {
        "ASYNCGATE_ENV": "test",
        "ASYNCGATE_DATABASE_URL": database_url,
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        # Active, with a limit no run reaches, so X-RateLimit-* headers are checked too.
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "true",
        "ASYNCGATE_RATE_LIMIT_BACKEND": "memory",
        "ASYNCGATE_RATE_LIMIT_DEFAULT_CALLS": "1000000",
        "ASYNCGATE_RATE_LIMIT_DEFAULT_WINDOW_SECONDS": "60",
    }
    return create_app(Settings.from_env(env))


def test_api_conforms_to_openapi_under_every_check(contract_app: Any, tenants: Any) -> None:
    outcome = run_contract(contract_app, tenants.keys["a"])
    assert not outcome.failures and not outcome.errors, outcome.report()
    # Every phase must really have run: a silently skipped phase proves nothing.
    missing = [phase.value for phase in PHASES if not outcome.scenarios.get(phase)]
    assert not missing, f"phases that ran no scenario: {missing}; ran {outcome.scenarios}"


# Regressions for what the contract work found, on both dialects --------------------------


def test_integral_floats_in_integer_fields_are_stored_as_integers(client: Any) -> None:
    first = client.post("/v1/tasks", json={"type": "f", "priority": 5.0, "idempotency_key": "k"})
    assert first.status_code == 201 and first.json["priority"] == 5
    assert '"priority":5,' in first.text
    replay = client.post("/v1/tasks", json={"type": "f", "priority": 5, "idempotency_key": "k"})
    assert replay.status_code == 200 and replay.json["task_id"] == first.json["task_id"]
    [grant] = client.claim(max_tasks=1.0, ttl_seconds=30.0)
    renewed = client.post(f"/v1/leases/{grant['lease_id']}/renew", json={"ttl_seconds": 60.0})
    assert renewed.status_code == 200
    artifact = {"uri": "s3://bucket/out", "size_bytes": 3.0}
    result = client.receipt(
        type="task.success",
        task_id=first.json["task_id"],
        parent_receipt_ids=[first.json["obligation_receipt_id"]],
        artifacts=[artifact],
    )
    assert result.status_code == 201, result.text
    assert '"size_bytes":3}' in result.text


@pytest.mark.parametrize(
    "since",
    [
        "2020-01-01T00:00:00Z",
        "2020-01-01t00:00:00z",
        "2020-01-01T23:59:60Z",
        "2020-01-01T00:00:00.1234567%2B05:30",
        "0001-01-01T00:00:00%2B05:00",
        "9999-12-31T23:59:60Z",
    ],
)
def test_every_rfc_3339_time_is_a_bound(client: Any, since: str) -> None:
    result = client.get(f"/v1/receipts?since={since}")
    assert result.status_code == 200, result.text


@pytest.mark.parametrize(
    "since",
    [
        "2020-01-01T00:00Z",
        "2020-W01-1T00:00:00Z",
        "2020-01-01T00:00:61Z",
        "2020-01-01T00:00:00",
        "2020-01-01 00:00:00Z",
    ],
)
def test_iso_8601_forms_outside_rfc_3339_are_422(client: Any, since: str) -> None:
    result = client.get("/v1/receipts", params={"since": since})
    assert result.status_code == 422 and result.json["field"] == "since", result.text
