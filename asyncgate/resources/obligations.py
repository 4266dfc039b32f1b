"""/v1/obligations/open and its deprecated alias POST /v1/bootstrap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import falcon
import orjson

from asyncgate.resources.base import JSON_OPTIONS, Resource, link_next, send_json
from asyncgate.validation import int_param, uuid_param

STREAM_CHUNK = 64 * 1024


async def json_array(items: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Encode an async stream of objects as one JSON array, in chunks of bounded size."""
    buffer = bytearray(b"[")
    first = True
    async for item in items:
        if not first:
            buffer += b","
        first = False
        buffer += orjson.dumps(item, option=JSON_OPTIONS)
        if len(buffer) >= STREAM_CHUNK:
            yield bytes(buffer)
            buffer.clear()
    buffer += b"]"
    yield bytes(buffer)


class OpenObligationsResource(Resource):
    async def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = self.identity(req)
        after = uuid_param(req, "after")
        limit = int_param(req, "limit", None, 1, 1000)
        if limit is None:
            # The whole dump, streamed from a cursor: memory stays flat however much is open.
            resp.content_type = falcon.MEDIA_JSON
            rows = await self.ledger.stream_open_obligations(identity, after)
            resp.stream = json_array(rows)
            return
        page = await self.ledger.open_obligations_page(identity, after, limit)
        link_next(req, resp, page, "receipt_id", limit)
        send_json(resp, page)


class BootstrapResource(Resource):
    """Deprecated: the same dump, announced as superseded by /v1/obligations/open."""

    def __init__(self, successor: OpenObligationsResource) -> None:
        self.successor = successor

    async def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header("Deprecation", "true")
        resp.append_header("Link", '</v1/obligations/open>; rel="successor-version"')
        await self.successor.on_get(req, resp)
