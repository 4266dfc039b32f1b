"""Hostile input against a real uvicorn server, on both dialects.

Every request here is refused with a 4xx in problem+json (or, below the application, a
closed connection), never a 500; and after each test the server still answers health
checks. A module-wide finalizer also reads /v1/metrics and the server log: no request of
the whole module, not even one whose answer nobody read, ended in a 5xx or a traceback.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import DIALECTS, Tenants
from realprocs import HOST, AsyncGateServer

PROBLEM_JSON = "application/problem+json"


class Gate:
    def __init__(self, server: AsyncGateServer, tenants: Tenants) -> None:
        self.server = server
        self.key = tenants.keys["a"]
        self.auth = {"Authorization": f"Bearer {self.key}"}
        self.http = httpx.Client(base_url=server.url, headers=self.auth, timeout=10)

    def post_raw(self, path: str, body: bytes, **headers: str) -> httpx.Response:
        return self.http.post(
            path, content=body, headers={"Content-Type": "application/json", **headers}
        )

    def raw(self, request: bytes, timeout: float = 10) -> tuple[int | None, bytes]:
        """Send bytes as they are; the status line's code, or None if the server just closed."""
        with socket.create_connection((HOST, self.server.port), timeout=timeout) as sock:
            try:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            except (ConnectionResetError, BrokenPipeError):
                return None, b""
        if not data.startswith(b"HTTP/"):
            return None, data
        return int(data.split(b" ", 2)[1]), data

    def request_head(self, method: str, path: str, length: int | None, **headers: str) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {self.key}"]
        lines += ["Content-Type: application/json", "Connection: close"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def healthy(self) -> bool:
        result = httpx.get(f"{self.server.url}/v1/health", timeout=5)
        listed = self.http.get("/v1/tasks", params={"limit": "1"})
        return result.status_code == 200 and listed.status_code == 200


@pytest.fixture(scope="module", params=DIALECTS)
def gate(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gate]:
    directory = tmp_path_factory.mktemp("hostile")
    tenants = Tenants(directory)
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'hostile.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    env = {
        "ASYNCGATE_DATABASE_URL": url,
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
    }
    with AsyncGateServer(env, directory / "uvicorn.log") as server:
        gate = Gate(server, tenants)
        yield gate
        five_hundreds = server.metrics_5xx(gate.key)
        log = server.log()
        gate.http.close()
    assert five_hundreds == {}, f"5xx answers were counted: {five_hundreds}"
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


@pytest.fixture(autouse=True)
def still_healthy_after(gate: Gate) -> Iterator[None]:
    yield
    assert gate.healthy(), "the server is unhealthy after hostile input"


def assert_problem(result: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert result.status_code in statuses, (result.status_code, result.text[:500])
    assert result.headers["content-type"] == PROBLEM_JSON
    problem = result.json()
    assert problem["status"] == result.status_code and problem["detail"]
    return problem


def a_task(gate: Gate) -> dict[str, Any]:
    result = gate.http.post("/v1/tasks", json={"type": "hostile"})
    assert result.status_code == 201, result.text
    return result.json()


# Bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b'{"type": "x", "payl', b'{"type": "x", "payload": {"a": [1, 2', b"{", b'"']
)
def test_truncated_json_is_400(gate: Gate, body: bytes) -> None:
    assert_problem(gate.post_raw("/v1/tasks", body), 400)


def test_a_body_cut_short_by_a_closing_client_is_not_a_500(gate: Gate) -> None:
    body = orjson.dumps({"type": "cut", "payload": {"pad": "x" * 500}})
    with socket.create_connection((HOST, gate.server.port), timeout=10) as sock:
        sock.sendall(gate.request_head("POST", "/v1/tasks", len(body)) + body[:100])
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(65536)
    assert answer == b"" or answer.split(b" ", 2)[1].startswith(b"4"), answer[:200]
    listed = gate.http.get("/v1/tasks", params={"type": "cut"}).json()
    assert listed == [], "a truncated body must never create a task"


def test_huge_bodies_are_413_without_reading_them_whole(gate: Gate) -> None:
    # Declared huge, sent small: refused on the declaration, no 10 MiB wait.
    head = gate.request_head("POST", "/v1/tasks", 10 * 1024 * 1024)
    status, _ = gate.raw(head + b'{"type": "x", "payload": {"a": "', timeout=5)
    assert status in (413, None)
    big = b'{"type": "x", "payload": {"blob": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    assert_problem(gate.post_raw("/v1/tasks", big), 413)

    def chunks() -> Iterator[bytes]:
        for _ in range(48):
            yield b"x" * 65536

    # Chunked, with no Content-Length: the limit is enforced while reading.
    streamed = gate.http.post(
        "/v1/tasks", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(streamed, 413)


def test_a_receipt_body_over_64_kib_is_422(gate: Gate) -> None:
    task = a_task(gate)
    receipt = {"type": "task.failure", "task_id": task["task_id"], "body": {"x": "y" * 70000}}
    problem = assert_problem(gate.http.post("/v1/receipts", json=receipt), 422)
    assert problem["field"] == "body"


@pytest.mark.parametrize("depth", [100, 600, 1200, 100_000])
def test_deeply_nested_json_is_refused_or_stored_never_a_500(gate: Gate, depth: int) -> None:
    nested = b'{"a": ' * depth + b"1" + b"}" * depth
    result = gate.post_raw("/v1/tasks", b'{"type": "deep", "payload": ' + nested + b"}")
    if result.status_code == 201:
        stored = gate.http.get(f"/v1/tasks/{result.json()['task_id']}")
        assert stored.status_code == 200
    else:
        assert_problem(result, 400, 422)
    task = a_task(gate)
    receipt = b'{"type": "task.failure", "task_id": "%s", "body": %s}' % (
        task["task_id"].encode(),
        nested,
    )
    written = gate.post_raw("/v1/receipts", receipt)
    assert written.status_code == 201 or assert_problem(written, 400, 422)


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "\xff\xfe"}',
        b'{"type": "x", "payload": {"k": "\xc0\xaf"}}',  # overlong encoding of "/"
        b'{"type": "x", "payload": {"k": "\xed\xa0\x80"}}',  # an encoded surrogate
        b'{"type": "x", "payload": {"\xe2\x82": 1}}',  # truncated sequence in a key
    ],
)
def test_invalid_utf8_is_400(gate: Gate, body: bytes) -> None:
    assert_problem(gate.post_raw("/v1/tasks", body), 400)


@pytest.mark.parametrize(
    "body",
    [
        b'{"type": "x", "payload": {"k": "\\ud800"}}',  # a lone high surrogate, escaped
        b'{"type": "x", "payload": {"k": "\\udc00x"}}',  # a lone low surrogate
    ],
)
def test_escaped_lone_surrogates_are_refused(gate: Gate, body: bytes) -> None:
    assert_problem(gate.post_raw("/v1/tasks", body), 400, 422)


# NUL characters: PostgreSQL cannot store them, so both dialects refuse them alike ----------

NUL = "a\u0000b"


@pytest.mark.parametrize(
    "spec",
    [
        {"type": NUL},
        {"type": "x", "payload": {NUL: 1}},
        {"type": "x", "payload": {"k": [1, {"deep": NUL}]}},
        {"type": "x", "idempotency_key": NUL},
        {"type": "x", "principal": f"agent:{NUL}"},
    ],
)
def test_nul_in_a_task_is_422(gate: Gate, spec: dict[str, Any]) -> None:
    assert_problem(gate.http.post("/v1/tasks", json=spec), 422)
    batch = gate.http.post("/v1/tasks/batch", json={"tasks": [{"type": "ok"}, spec]})
    assert_problem(batch, 422)


@pytest.mark.parametrize(
    "extra",
    [
        {"body": {"note": NUL}},
        {"body": {NUL: "key"}},
        {"artifacts": [{"uri": f"s3://{NUL}"}]},
        {"artifacts": [{"uri": "s3://ok", "media_type": NUL}]},
        {"delivery_proof": {"id": NUL}},
    ],
)
def test_nul_in_a_receipt_is_422(gate: Gate, extra: dict[str, Any]) -> None:
    task = a_task(gate)
    receipt = {"type": "task.success", "task_id": task["task_id"], **extra}
    assert_problem(gate.http.post("/v1/receipts", json=receipt), 422)
    assert_problem(gate.http.post("/v1/receipts/batch", json={"receipts": [receipt]}), 422)


def test_nul_in_a_claim_and_in_query_parameters_is_422(gate: Gate) -> None:
    assert_problem(gate.http.post("/v1/leases", json={"worker": f"worker:{NUL}"}), 422)
    assert_problem(gate.http.post("/v1/leases", json={"worker": "worker:w", "types": [NUL]}), 422)
    for path in ("/v1/tasks", "/v1/receipts"):
        assert_problem(gate.http.get(path, params={"type": NUL}), 422)
    assert gate.http.get("/v1/tasks/a%00b").status_code == 404


def test_a_raw_nul_byte_inside_a_json_string_is_400(gate: Gate) -> None:
    assert_problem(gate.post_raw("/v1/tasks", b'{"type": "a\x00b"}'), 400)


# Sizes and numbers -------------------------------------------------------------------------


def test_ten_thousand_parent_ids_are_422(gate: Gate) -> None:
    task = a_task(gate)
    parents = [str(uuid.uuid4()) for _ in range(10_000)]
    receipt = {"type": "task.failure", "task_id": task["task_id"], "parent_receipt_ids": parents}
    problem = assert_problem(gate.http.post("/v1/receipts", json=receipt), 422)
    assert problem["field"] == "parent_receipt_ids"
    batch = {"receipts": [receipt]}
    assert_problem(gate.http.post("/v1/receipts/batch", json=batch), 422)


def test_oversized_batches_and_lists_are_422(gate: Gate) -> None:
    tasks = {"tasks": [{"type": "x"}] * 1001}
    assert_problem(gate.http.post("/v1/tasks/batch", json=tasks), 422)
    claim = {"worker": "worker:w", "types": [f"t{n}" for n in range(10_000)]}
    assert_problem(gate.http.post("/v1/leases", json=claim), 422)
    artifacts = [{"uri": f"s3://a/{n}"} for n in range(101)]
    task = a_task(gate)
    receipt = {"type": "task.success", "task_id": task["task_id"], "artifacts": artifacts}
    assert_problem(gate.http.post("/v1/receipts", json=receipt), 422)


BIG_NUMBERS = [b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616"]
BIG_NUMBERS += [b"99999999999999999999999999", b"1e400", b"-1e400"]


@pytest.mark.parametrize("number", BIG_NUMBERS)
def test_numbers_past_64_bits_in_typed_fields_are_4xx(gate: Gate, number: bytes) -> None:
    assert_problem(gate.post_raw("/v1/tasks", b'{"type": "x", "priority": %s}' % number), 400, 422)
    claims = [b'{"worker": "worker:w", "%s": %s}' % (f, number) for f in (b"ttl_seconds",)]
    claims += [b'{"worker": "worker:w", "max_tasks": %s}' % number]
    claims += [b'{"worker": "worker:w", "wait_seconds": %s}' % number]
    for claim in claims:
        assert_problem(gate.post_raw("/v1/leases", claim), 400, 422)
    task = a_task(gate)
    artifact = b'{"uri": "s3://a", "size_bytes": %s}' % number
    receipt = b'{"type": "task.success", "task_id": "%s", "artifacts": [%s]}' % (
        task["task_id"].encode(),
        artifact,
    )
    assert_problem(gate.post_raw("/v1/receipts", receipt), 400, 422)


@pytest.mark.parametrize("number", [b"9223372036854775807", b"18446744073709551615", *BIG_NUMBERS])
def test_big_numbers_in_free_json_are_stored_exactly_or_refused(gate: Gate, number: bytes) -> None:
    result = gate.post_raw("/v1/tasks", b'{"type": "num", "payload": {"n": %s}}' % number)
    if result.status_code == 201:
        stored = gate.http.get(f"/v1/tasks/{result.json()['task_id']}").json()
        assert stored["payload"]["n"] == orjson.loads(number)
    else:
        assert_problem(result, 400, 422)
    task = a_task(gate)
    receipt = b'{"type": "task.failure", "task_id": "%s", "body": {"n": %s}}' % (
        task["task_id"].encode(),
        number,
    )
    written = gate.post_raw("/v1/receipts", receipt)
    assert written.status_code == 201 or assert_problem(written, 400, 422)


# Query parameters --------------------------------------------------------------------------

BAD_QUERIES = [
    ("/v1/tasks", "limit=abc"),
    ("/v1/tasks", "limit=0"),
    ("/v1/tasks", "limit=1001"),
    ("/v1/tasks", "limit=99999999999999999999999999"),
    ("/v1/tasks", "limit=-1"),
    ("/v1/tasks", "limit=1e3"),
    ("/v1/tasks", "limit=1&limit=2"),
    ("/v1/tasks", "state=BOGUS"),
    ("/v1/tasks", "state=PENDING&state=ACTIVE"),
    ("/v1/tasks", "after=not-a-uuid"),
    ("/v1/tasks", f"after={uuid.uuid4()}"),
    ("/v1/tasks", "type=" + "x" * 300),
    ("/v1/receipts", "since=yesterday"),
    ("/v1/receipts", "since=2024-01-01T00:00:00"),
    ("/v1/receipts", "until=2024-13-45T99:00:00Z"),
    ("/v1/receipts", "since=2024-01-01T00:00:00Z&since=2024-01-02T00:00:00Z"),
    ("/v1/receipts", "task_id=123"),
    ("/v1/receipts", "task_id=%ZZ"),
    ("/v1/receipts", "type=a&type=b"),
    ("/v1/obligations/open", "limit=%FF%FE"),
    ("/v1/obligations/open", "after=00000000-0000-0000-0000-000000000000"),
]


@pytest.mark.parametrize(("path", "query"), BAD_QUERIES)
def test_bad_and_duplicate_query_parameters_are_422(gate: Gate, path: str, query: str) -> None:
    status, data = gate.raw(gate.request_head("GET", f"{path}?{query}", None))
    assert status == 422, data[:400]
    assert b"application/problem+json" in data.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("query", ["", "=&&=", "limit", "unknown=1", "%00=1", "a=" + "b" * 8000])
def test_odd_but_harmless_query_strings_are_not_errors(gate: Gate, query: str) -> None:
    status, data = gate.raw(gate.request_head("GET", f"/v1/tasks?{query}", None))
    assert status is not None and status < 500 and status in (200, 414, 422), data[:400]


# The HTTP layer: headers, framing, slow clients ------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Huge": "a" * 65536},
        {f"X-Many-{n}": "b" * 60 for n in range(1000)},
        {"Authorization-Extra": "c" * 65536, "Cookie": "d" * 65536},
    ],
)
def test_64_kib_of_headers_is_refused_or_closed_never_a_500(
    gate: Gate, headers: dict[str, str]
) -> None:
    status, data = gate.raw(gate.request_head("GET", "/v1/tasks?limit=1", None, **headers))
    # uvicorn's httptools parser takes headers of any size; the app refuses them itself.
    assert status is None or status == 431, data[:300]
    assert status is None or b"application/problem+json" in data


def test_a_64_kib_bearer_token_is_refused(gate: Gate) -> None:
    head = f"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {'k' * 65536}\r\n"
    status, data = gate.raw(head.encode() + b"Connection: close\r\n\r\n")
    assert status is None or status == 431, data[:300]


def test_headers_under_the_limit_are_served(gate: Gate) -> None:
    status, data = gate.raw(gate.request_head("GET", "/v1/tasks?limit=1", None, X_Big="e" * 12000))
    assert status == 200, data[:300]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\n{}",
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ZZ\r\n{}\r\n0\r\n\r\n",
        b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
        b"BREW /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/tasks/" + b"9" * 20000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
    ],
)
def test_malformed_http_is_refused_or_closed(gate: Gate, request_bytes: bytes) -> None:
    status, data = gate.raw(request_bytes)
    assert status is None or 400 <= status < 500, data[:300]


def test_a_client_trickling_its_body_does_not_block_others(gate: Gate) -> None:
    body = orjson.dumps({"type": "trickled", "payload": {"pad": "y" * 40}})
    answers: list[tuple[int | None, bytes]] = []

    def trickle() -> None:
        with socket.create_connection((HOST, gate.server.port), timeout=20) as sock:
            sock.sendall(gate.request_head("POST", "/v1/tasks", len(body)))
            for byte in body:
                sock.sendall(bytes([byte]))
                time.sleep(3.0 / len(body))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        answers.append((int(data.split(b" ", 2)[1]), data))

    slow = threading.Thread(target=trickle)
    slow.start()
    time.sleep(0.5)
    started = time.monotonic()
    meanwhile = gate.http.post("/v1/tasks", json={"type": "meanwhile"})
    listed = gate.http.get("/v1/tasks", params={"limit": "5"})
    elapsed = time.monotonic() - started
    assert slow.is_alive(), "the trickle finished too soon to prove anything"
    slow.join(20)
    assert meanwhile.status_code == 201 and listed.status_code == 200
    assert elapsed < 1.5, f"another client waited {elapsed:.1f}s behind a slow one"
    assert answers and answers[0][0] == 201, answers


def test_a_client_that_stalls_mid_body_does_not_block_others(gate: Gate) -> None:
    with socket.create_connection((HOST, gate.server.port), timeout=10) as stalled:
        stalled.sendall(gate.request_head("POST", "/v1/tasks", 1000) + b'{"type": "st')
        time.sleep(0.3)
        started = time.monotonic()
        assert gate.http.post("/v1/tasks", json={"type": "other"}).status_code == 201
        assert time.monotonic() - started < 1.5
