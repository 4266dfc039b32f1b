"""Problem details (RFC 9457): every error AsyncGate answers is rendered here, once."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import falcon
import orjson

from asyncgate.storage import StorageUnavailable

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:asyncgate:problem:"
log = logging.getLogger("asyncgate")


class Problem(falcon.HTTPError):
    """An error with a machine-readable ``code`` and, when one field is at fault, ``field``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, title=code.replace("_", " "), description=detail, headers=headers)
        self.code = code
        self.field = field


def bad_request(detail: str) -> Problem:
    return Problem(400, "malformed_json", detail)


def invalid(field: str | None, detail: str, code: str = "validation_failed") -> Problem:
    return Problem(422, code, detail, field=field)


def not_found(what: str, field: str | None = None) -> Problem:
    return Problem(404, "not_found", f"{what} does not exist in this tenant", field=field)


def conflict(code: str, detail: str, field: str | None = None) -> Problem:
    return Problem(409, code, detail, field=field)


def problem_body(exc: falcon.HTTPError) -> dict[str, Any]:
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    code = getattr(exc, "code", None) or phrase.lower().replace(" ", "_").replace("-", "_")
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + code,
        "title": exc.title if getattr(exc, "code", None) else phrase,
        "status": status,
        "detail": exc.description or exc.title or code,
        "code": code,
    }
    field = getattr(exc, "field", None)
    if field:
        body["field"] = field
    return body


def serialize_problem(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    resp.content_type = PROBLEM_JSON
    resp.data = orjson.dumps(problem_body(exc))


async def handle_storage_unavailable(
    req: falcon.Request, resp: falcon.Response, exc: StorageUnavailable, params: dict[str, Any]
) -> None:
    log.warning("storage unavailable", extra={"error": str(exc), "path": req.path})
    raise Problem(
        503,
        "storage_unavailable",
        "the database cannot be reached right now; retry after the Retry-After delay",
        headers={"Retry-After": "1"},
    )


async def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]
) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error", extra={"path": req.path, "method": req.method})
    raise Problem(500, "internal_error", "an unexpected error occurred; it has been logged")
