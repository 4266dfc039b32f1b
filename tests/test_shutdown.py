"""Graceful shutdown of a real ``uvicorn asyncgate.main:app``, on both dialects.

SIGTERM must let in-flight requests finish, answer waiting long-poll claims at once with
``[]`` (rather than holding the drain for up to 20 s), close the pool, and lose nothing that
was acknowledged.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import orjson
from conftest import Tenants
from realprocs import HOST, AsyncGateServer, query

LONG_POLLS = 4
WRITERS = 3


def trickle_start(port: int, key: str, body: bytes) -> socket.socket:
    """Open a request whose headers and first half of the body are sent; the rest is not."""
    sock = socket.create_connection((HOST, port), timeout=15)
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_sigterm_drains_in_flight_requests_and_answers_long_polls_at_once(
    private_database_url: str, tenants: Tenants, tmp_path: Path
) -> None:
    app_name = f"asyncgate_shutdown_{uuid.uuid4().hex[:8]}"
    url = (
        f"{private_database_url}?application_name={app_name}"
        if private_database_url.startswith("postgresql")
        else private_database_url
    )
    env = {"ASYNCGATE_DATABASE_URL": url, "ASYNCGATE_API_KEYS_FILE": str(tenants.path)}
    env["ASYNCGATE_RATE_LIMIT_ACTIVE"] = "false"
    server = AsyncGateServer(env, tmp_path / "uvicorn.log")
    with server:
        base = server.url
        polls: list[tuple[int, object, float]] = []

        def long_poll() -> None:
            # Tenant b has no tasks: this claim would wait its whole 20 s.
            result = httpx.post(
                f"{base}/v1/leases",
                json={"worker": "worker:idle", "wait_seconds": 20},
                headers={"Authorization": f"Bearer {tenants.keys['b']}"},
                timeout=30,
            )
            polls.append((result.status_code, result.json(), time.monotonic()))

        acknowledged: list[dict] = []
        stop_writing = threading.Event()

        def writer(number: int) -> None:
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {tenants.keys['a']}"}
            ) as http:
                n = 0
                while not stop_writing.is_set():
                    n += 1
                    try:
                        result = http.post(
                            "/v1/tasks", json={"type": "drain", "payload": {"w": number, "n": n}}
                        )
                    except httpx.TransportError:
                        return  # the server stopped accepting: expected once it drains
                    assert result.status_code == 201 or result.status_code >= 500, result.text
                    if result.status_code == 201:
                        acknowledged.append(result.json())

        threads = [threading.Thread(target=long_poll) for _ in range(LONG_POLLS)]
        threads += [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # long polls are waiting, writers are writing
        body = orjson.dumps({"type": "in-flight", "payload": {"pad": "x" * 2000}})
        sock = trickle_start(server.port, tenants.keys["a"], body)
        time.sleep(0.2)

        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        time.sleep(0.5)
        # The request that was mid-body when the signal came is still served in full.
        sock.sendall(body[len(body) // 2 :])
        status, answer = read_response(sock)
        sock.close()
        assert status == 201, answer
        in_flight = orjson.loads(answer)

        # uvicorn re-raises the signal once drained, so dying of SIGTERM is a clean exit.
        assert server.wait(15) in (0, -signal.SIGTERM), server.log()
        exited = time.monotonic() - signalled
        stop_writing.set()
        for thread in threads:
            thread.join(30)

    assert len(polls) == LONG_POLLS
    for status, claimed, answered in polls:
        assert (status, claimed) == (200, [])
        assert answered - signalled < 3, f"a long poll was held {answered - signalled:.1f}s"
    assert exited < 8, f"the drain took {exited:.1f}s"
    log = server.log()
    assert "Application shutdown complete" in log and "Traceback" not in log, log

    # Nothing acknowledged is lost, each with its obligation.
    assert len(acknowledged) > 10
    for task in [*acknowledged, in_flight]:
        rows = query(
            private_database_url,
            "SELECT r.type FROM tasks t JOIN receipts r ON r.tenant = t.tenant"
            " AND r.receipt_id = t.obligation_receipt_id WHERE t.task_id = %s",
            (task["task_id"],),
        )
        assert rows == [("task.assigned",)], task
    if private_database_url.startswith("postgresql"):
        # The pool was closed: no connection of this instance outlives it.
        left = query(
            private_database_url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (app_name,),
        )
        assert left == [(0,)]
