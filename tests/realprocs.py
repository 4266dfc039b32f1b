"""Real processes for the fault tests: AsyncGate under uvicorn, a private PostgreSQL cluster and
a private Redis, each on a free loopback port and each stopped by its owner's finalizer.

The shared PostgreSQL (5432) and Redis (6379) serve colleagues' runs too, so anything a test
restarts, freezes or kills is started here, privately, in a temporary directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncgate.http_protocol import JOINED_WRITES_PROTOCOL

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took, fails the test otherwise."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    pytest.fail(f"{what} within {timeout} s")


def _stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a process group started with ``start_new_session``, then SIGKILL if needed."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        process.wait(5)


class AsyncGateServer:
    """``uvicorn asyncgate.main:app`` in its own process group, exactly as operators run it."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        base = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCGATE_")}
        self.env = {**base, "ASYNCGATE_ENV": "test", "ASYNCGATE_LOG_LEVEL": "WARNING", **env}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> AsyncGateServer:
        command = [sys.executable, "-m", "uvicorn", "asyncgate.main:app", "--host", HOST]
        command += ["--port", str(self.port), "--no-access-log", "--log-level", "info"]
        command += ["--http", JOINED_WRITES_PROTOCOL]  # as `asyncgate serve` and the image run it
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        wait_for(self._answers, timeout, f"AsyncGate did not answer on {self.url}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"AsyncGate exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/v1/health", timeout=2).status_code in (200, 503)
        except httpx.TransportError:
            return False

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics_5xx(self, key: str) -> dict[str, float]:
        """Responses with a 5xx status so far, by route and status, from /v1/metrics."""
        text = httpx.get(
            f"{self.url}/v1/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=5
        ).text
        found = {}
        for line in text.splitlines():
            match = re.match(r'^\w+requests_total\{(.*status="(5\d\d)".*)\} (\S+)$', line)
            if match and float(match.group(3)) > 0:
                found[match.group(1)] = float(match.group(3))
        return found

    def __enter__(self) -> AsyncGateServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not found:
        pytest.fail("no PostgreSQL binaries under /usr/lib/postgresql/*/bin (initdb, pg_ctl)")
    return Path(found[-1]).parent


class PrivateCluster:
    """A throwaway PostgreSQL cluster of this test alone, which it may stop and start at will."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="asyncgate-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.url = f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as the postgres OS user.
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(
                f"private PostgreSQL cluster: {' '.join(args[:2])} failed "
                f"({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.server_log()}"
            )

    def server_log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def create(self) -> PrivateCluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={HOST} -c fsync=off"
            " -c max_connections=60"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(pytest.fail.Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """A Redis of this test alone: it may be killed, restarted or frozen (SIGSTOP)."""

    def __init__(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed; the Redis fault test needs its own")
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self._pong, 10, f"private redis-server did not answer on port {self.port}")
        return self

    def _pong(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(5)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one SQL statement on an AsyncGate database, either dialect, outside the service."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)) as db:
            # The same statements serve both dialects: SQLite ids are text already.
            sql = sql.replace("%s", "?").replace("::text", "")
            return db.execute(sql, params).fetchall()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()
