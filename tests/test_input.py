"""Refused input: the SPEC's 4xx codes in problem+json, naming the field or rule, never a 500."""

from __future__ import annotations

import pytest

JSON = {"Content-Type": "application/json"}


def assert_problem(result, status, field=None):
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/problem+json"
    problem = result.json
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= set(problem)
    if field is not None:
        assert problem["field"] == field
    return problem


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"type": "x",}', b"\xff\xfe", b"[1, 2"])
def test_malformed_json_is_400(client, body):
    assert_problem(client.post("/v1/tasks", body=body, headers=JSON), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_non_json_content_type_is_415(client, content_type):
    result = client.post("/v1/tasks", body=b'{"type": "x"}', headers={"Content-Type": content_type})
    assert_problem(result, 415)


def test_json_with_a_charset_parameter_is_accepted(client):
    result = client.post(
        "/v1/tasks",
        body=b'{"type": "x"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert result.status_code == 201


def test_body_over_the_limit_is_413(make_client):
    client = make_client(MAX_BODY_BYTES="2048")
    big = b'{"type": "x", "payload": {"blob": "' + b"x" * 4096 + b'"}}'
    assert_problem(client.post("/v1/tasks", body=big, headers=JSON), 413)


def test_default_body_limit_is_one_mebibyte(client):
    big = b'{"type": "x", "payload": {"blob": "' + b"x" * (1024 * 1024) + b'"}}'
    assert_problem(client.post("/v1/tasks", body=big, headers=JSON), 413)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "type"),
        ({"type": ""}, "type"),
        ({"type": "x" * 256}, "type"),
        ({"type": 5}, "type"),
        ({"type": "x", "payload": []}, "payload"),
        ({"type": "x", "payload": "text"}, "payload"),
        ({"type": "x", "priority": "high"}, "priority"),
        ({"type": "x", "priority": 1.5}, "priority"),
        ({"type": "x", "priority": 2**40}, "priority"),
        ({"type": "x", "principal": "no spaces: allowed"}, "principal"),
        ({"type": "x", "principal": "Agent:x"}, "principal"),
        ({"type": "x", "idempotency_key": ""}, "idempotency_key"),
        ({"type": "x", "surprise": 1}, "body"),
    ],
)
def test_schema_violations_are_422_naming_the_field(client, body, field):
    assert_problem(client.post("/v1/tasks", json=body), 422, field)


def test_top_level_must_be_an_object(client):
    assert_problem(client.post("/v1/tasks", json=[{"type": "x"}]), 422)


def test_nul_characters_are_refused_with_422(client):
    result = client.post("/v1/tasks", body=b'{"type": "a\\u0000b"}', headers=JSON)
    problem = assert_problem(result, 422)
    assert "NUL" in problem["detail"]


def test_unusual_unicode_round_trips(client):
    payload = {"emoji": "\U0001f680", "rtl": "\u05e9\u05dc\u05d5\u05dd", "zw": "a\u200bb"}
    task = client.create_task(type="unicode-\u00e9", payload=payload)
    stored = client.get(f"/v1/tasks/{task['task_id']}").json
    assert stored["payload"] == payload and stored["type"] == "unicode-\u00e9"


def test_numbers_past_64_bits_are_refused(client):
    result = client.post(
        "/v1/tasks", body=b'{"type": "x", "priority": 99999999999999999999}', headers=JSON
    )
    assert 400 <= result.status_code < 500


def test_deeply_nested_json_is_refused(client):
    body = b'{"type": "x", "payload": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"}"
    result = client.post("/v1/tasks", body=body, headers=JSON)
    assert 400 <= result.status_code < 500


def test_wrong_method_is_405_problem(client):
    assert_problem(client.request("PUT", "/v1/tasks", json={}), 405)


def test_errors_name_rule_and_stay_healthy(client):
    for _ in range(3):
        client.post("/v1/tasks", body=b"{", headers=JSON)
    assert client.get("/v1/health").status_code == 200
