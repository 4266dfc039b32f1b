"""uvicorn's httptools protocol, sending each response's head and body in one write.

uvicorn writes the status line and headers as soon as the app starts its response, and the
body in a second write: two ``send`` calls and two loopback packets per response, which
profiles as the largest single cost of a small JSON response. Here the writes made in one
event-loop turn are joined and sent once, at the end of that turn. Falcon sends the head and
body of a buffered response in one turn, so each response leaves in one write; a streamed
body still goes out chunk by chunk.

Select it with ``--http asyncgate.http_protocol:HttpToolsJoinedWrites`` (``asyncgate serve``
and the Docker image do). Without it, uvicorn's own protocol sends the same bytes. It builds on
uvicorn's httptools protocol class, not a public API: tests/test_http_protocol.py and every
real-server test (tests/realprocs.py) run through it, so an incompatible uvicorn fails CI.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["JOINED_WRITES_PROTOCOL", "HttpToolsJoinedWrites"]

# uvicorn's --http value (an import string) that selects this protocol.
JOINED_WRITES_PROTOCOL = "asyncgate.http_protocol:HttpToolsJoinedWrites"


class JoinedWritesTransport:
    """A transport whose writes within one event-loop turn leave as one write."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        # A connection lost meanwhile has nobody left to read the bytes.
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # what was written before close() still goes out, as with the bare transport
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else (reading, flow control, extra info, abort) is the transport's own.
        return getattr(self._transport, name)


class HttpToolsJoinedWrites(HttpToolsProtocol):
    """uvicorn's httptools protocol over a transport that joins each turn's writes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWritesTransport(transport, self.loop))  # type: ignore[arg-type]
