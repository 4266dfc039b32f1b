"""What every resource shares: the caller's identity, JSON out, and the Link header."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import falcon
import orjson

from asyncgate.ledger import Ledger
from asyncgate.settings import Identity, Settings
from asyncgate.validation import int_param, read_json, validate

JSON_OPTIONS = orjson.OPT_UTC_Z
MAX_PAGE = 1000
DEFAULT_PAGE = 100


def send_json(resp: falcon.Response, data: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = orjson.dumps(data, option=JSON_OPTIONS)


def link_next(
    req: falcon.Request, resp: falcon.Response, page: list[dict], id_field: str, limit: int
) -> None:
    """RFC 8288 next link while a full page suggests more rows exist."""
    if len(page) < limit:
        return
    query = {k: v for k, v in req.params.items() if k != "after"}
    query["after"] = page[-1][id_field]
    query["limit"] = str(limit)
    resp.append_header("Link", f'<{req.path}?{urlencode(query, doseq=True)}>; rel="next"')


def whole_numbers(spec: dict[str, Any], *names: str) -> dict[str, Any]:
    """JSON Schema's integer admits 5.0: keep it as 5, so storage, replays and answers agree."""
    for name in names:
        if isinstance(spec.get(name), float):
            spec[name] = int(spec[name])
    return spec


class Resource:
    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger = ledger
        self.settings = settings

    @staticmethod
    def identity(req: falcon.Request) -> Identity:
        return req.context.identity

    async def body(
        self, req: falcon.Request, schema: str, *, optional: bool = False
    ) -> dict[str, Any]:
        data = await read_json(req, self.settings.max_body_bytes, optional=optional)
        return validate(schema, data)

    @staticmethod
    def page_limit(req: falcon.Request) -> int:
        return int_param(req, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
