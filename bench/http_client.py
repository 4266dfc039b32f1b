"""A minimal HTTP/1.1 keep-alive client over asyncio streams, cheap enough to load a server.

General clients (httpx, aiohttp) spend more CPU per request than the server under test
would on the 2-core machines we measure on; this one builds requests from bytes and
parses only the status line and Content-Length.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson


class Connection:
    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.headers = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        payload = b"" if body is None else orjson.dumps(body)
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\n".encode()
            + self.headers
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lowered = name.lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            return status, await self._read_chunked()
        return status, await self.reader.readexactly(length) if length else b""

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        data = await self.expect(method, path, body, expect)
        return orjson.loads(data) if data else None

    async def expect(self, method: str, path: str, body: Any, status: int) -> bytes:
        """The answer's body, unparsed, once its status is ``status``."""
        got, data = await self.request(method, path, body)
        if got != status:
            raise RuntimeError(f"{method} {path}: {got} {data[:300]!r}")
        return data
