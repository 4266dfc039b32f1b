"""The uvicorn protocol that sends each response's head and body in one write.

The transport is checked on its own with a recording transport (which writes reach the socket,
and when); the protocol is checked under a real uvicorn, over a raw socket: pipelined keep-alive
requests, a streamed body, and a request the parser refuses.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest
from conftest import Tenants
from realprocs import HOST, AsyncGateServer

from asyncgate.http_protocol import JoinedWritesTransport


class RecordingTransport:
    """What reached the socket: each write, and whether the transport was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8080) if name == "sockname" else default


async def next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_as_one_write_at_its_end():
    async def scenario() -> list[list[bytes]]:
        inner = RecordingTransport()
        joined = JoinedWritesTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        joined.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        joined.write(b"{}")
        seen = [list(inner.writes)]
        await next_turn()
        seen.append(list(inner.writes))
        joined.write(b"next")
        await next_turn()
        seen.append(list(inner.writes))
        return seen

    during, after, later = asyncio.run(scenario())
    assert during == []
    assert after == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert later == after + [b"next"]


def test_close_sends_what_was_written_first_and_a_lost_connection_gets_nothing():
    async def scenario() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed_by_server = RecordingTransport()
        joined = JoinedWritesTransport(closed_by_server, loop)  # type: ignore[arg-type]
        joined.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        joined.close()
        lost = RecordingTransport()
        joined_lost = JoinedWritesTransport(lost, loop)  # type: ignore[arg-type]
        joined_lost.write(b"unread")
        lost.closed = True  # the peer went away before the turn ended
        await next_turn()
        return closed_by_server, lost

    closed_by_server, lost = asyncio.run(scenario())
    assert closed_by_server.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert closed_by_server.closed
    assert lost.writes == []


def test_every_way_of_writing_keeps_the_order_of_the_bytes():
    async def scenario() -> list[bytes]:
        inner = RecordingTransport()
        joined = JoinedWritesTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        joined.write(b"head;")
        joined.writelines([b"one;", b"two;"])
        joined.write_eof()
        await next_turn()
        return inner.writes

    assert asyncio.run(scenario()) == [b"head;one;two;", b"<eof>"]


def test_other_transport_calls_reach_the_transport():
    joined = JoinedWritesTransport(RecordingTransport(), asyncio.new_event_loop())  # type: ignore[arg-type]
    assert joined.get_extra_info("sockname") == ("127.0.0.1", 8080)
    assert joined.is_closing() is False


# Under a real uvicorn -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("protocol")
    tenants = Tenants(directory)
    env = {
        "ASYNCGATE_DATABASE_URL": f"sqlite:///{directory / 'protocol.db'}",
        "ASYNCGATE_API_KEYS_FILE": str(tenants.path),
        "ASYNCGATE_RATE_LIMIT_ACTIVE": "false",
    }
    with AsyncGateServer(env, directory / "uvicorn.log") as server:
        yield server, tenants.keys["a"]


class Reader:
    """Reads HTTP/1.1 responses off a keep-alive socket: Content-Length or chunked bodies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def until(self, marker: bytes) -> bytes:
        while (end := self.buffer.find(marker)) < 0:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection mid-response"
            self.buffer += chunk
        taken, self.buffer = self.buffer[:end], self.buffer[end + len(marker) :]
        return taken

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection mid-body"
            self.buffer += chunk
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def response(self) -> tuple[bytes, bytes]:
        head = self.until(b"\r\n\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if headers.get(b"transfer-encoding") != b"chunked":
            return head, self.exactly(int(headers.get(b"content-length", b"0")))
        body = b""
        while size := int(self.until(b"\r\n"), 16):
            body += self.exactly(size)
            self.until(b"\r\n")
        self.until(b"\r\n")
        return head, body


def request(method: str, path: str, key: str, body: Any = None) -> bytes:
    payload = b"" if body is None else orjson.dumps(body)
    return (
        f"{method} {path} HTTP/1.1\r\nhost: {HOST}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload


def test_pipelined_requests_get_whole_responses_in_order(served):
    server, key = served
    pipelined = (
        request("POST", "/v1/tasks", key, {"type": "protocol"})
        + request("GET", "/v1/tasks?limit=1", key)
        + request("POST", "/v1/tasks", key, {"type": ""})
        + request("GET", "/v1/obligations/open", key)
    )
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(pipelined)
        reader = Reader(sock)
        responses = [reader.response() for _ in range(4)]
    statuses = [head.split(b" ", 2)[1] for head, _ in responses]
    assert statuses == [b"201", b"200", b"422", b"200"]
    created = orjson.loads(responses[0][1])
    assert created["type"] == "protocol"
    assert [task["task_id"] for task in orjson.loads(responses[1][1])] == [created["task_id"]]
    assert b"content-type: application/problem+json" in responses[2][0].lower()
    # The bootstrap dump is streamed chunk by chunk: the chunks arrive whole and in order.
    assert b"transfer-encoding: chunked" in responses[3][0].lower()
    [obligation] = orjson.loads(responses[3][1])
    assert obligation["receipt_id"] == created["obligation_receipt_id"]


def test_a_request_the_parser_refuses_is_answered_then_closed(served):
    server, _ = served
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")


def test_the_log_has_no_traceback(served):
    server, _ = served
    assert "Traceback" not in server.log()
