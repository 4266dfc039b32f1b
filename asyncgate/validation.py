"""Request input: JSON bodies read under a size limit and validated against ``schema/``.

The same schema files are ``$ref``'d by openapi.yaml, so the contract and the code
cannot drift. Each is compiled twice, at startup: jsonschema-rs (Rust) answers whether a body
is valid; fastjsonschema, compiled to Python, runs only on a body found invalid, and names the
field and rule at fault for the 422. A valid body gets its declared defaults from
``_defaults``, as fastjsonschema's ``use_default`` would fill them.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import falcon
import fastjsonschema
import jsonschema_rs
import orjson

from asyncgate import PROJECT_ROOT
from asyncgate.errors import Problem, bad_request, invalid

SCHEMA_DIR = PROJECT_ROOT / "schema"
JSON_TYPE = re.compile(r"^application/(?:[a-z0-9.+-]+\+)?json$")
# RFC 3339 date-time, split so that seconds (a leap second is :60) are added after parsing.
RFC3339 = re.compile(
    r"(?P<minute>\d{4}-\d\d-\d\d[Tt]\d\d:\d\d):(?P<second>[0-5]\d|60)"
    r"(?P<fraction>\.\d+)?(?P<offset>[Zz]|[+-]\d\d:\d\d)",
    re.ASCII,
)
CANONICAL_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)
# orjson parses 1024 levels but serialises only 254, and the recursive checks and schemas
# need Python's stack: deeper input would be accepted, then fail as a 500. No real task
# payload comes near this.
MAX_DEPTH = 128


# read_json refuses NUL anywhere in a body (422 nul_character) before any schema runs, so
# the server skips the recursive walk by which the contract states that same rule: it would
# cost about a second of event-loop time on a 1 MiB payload of small objects.
SERVER_SHORTCUTS: dict[str, dict[str, Any]] = {
    "json_value": {},
    "json_object": {"type": "object"},
}


def _load(name: str) -> dict[str, Any]:
    document = orjson.loads((SCHEMA_DIR / name).read_bytes())
    if name == "common.json":
        document["$defs"].update(SERVER_SHORTCUTS)
    return document


def _resolve_file(uri: str) -> dict[str, Any]:
    return _load(Path(uri.split("#", 1)[0]).name)


# The schemas request bodies are validated against (the resources name them).
REQUEST_SCHEMAS = (
    "task-create.json",
    "task-batch-create.json",
    "receipt-create.json",
    "receipt-batch-create.json",
    "lease-claim.json",
    "lease-renew.json",
)


def prepare() -> None:
    """Compile every request schema now, so no request waits for it (and a broken schema
    stops the server at startup rather than failing a request)."""
    for name in REQUEST_SCHEMAS:
        validator(name)
        _is_valid(name)
        _defaults(name)


def _document(name: str) -> dict[str, Any]:
    """``schema/<name>`` as both validators compile it."""
    definition = _load(name)
    # Relative $refs between schema files resolve against this base URI, to local files.
    definition["$id"] = (SCHEMA_DIR / name).as_uri()
    return definition


@cache
def validator(name: str) -> Callable[[Any], Any]:
    """The compiled validator of ``schema/<name>``; it fills in declared defaults."""
    return fastjsonschema.compile(
        _document(name), handlers={"file": _resolve_file}, use_default=True
    )


@cache
def _is_valid(name: str) -> Callable[[Any], bool]:
    """jsonschema-rs's verdict on ``schema/<name>``, the very document fastjsonschema compiles."""
    return jsonschema_rs.validator_for(_document(name), retriever=_resolve_file).is_valid


Fill = Callable[[Any], None]


@cache
def _defaults(name: str) -> Fill | None:
    """What fastjsonschema's ``use_default`` does to a valid body of ``schema/<name>``: a
    property missing from an object gets its declared default; None if the schema has none."""
    return _filler(_load(name), name, frozenset())


def _filler(schema: dict[str, Any], document: str, seen: frozenset[str]) -> Fill | None:
    if "$ref" in schema:
        target, _, pointer = schema["$ref"].partition("#")
        document = target or document
        if f"{document}#{pointer}" in seen:  # a recursive definition declares no defaults
            return None
        seen = seen | {f"{document}#{pointer}"}
        schema = _load(document)
        for part in filter(None, pointer.split("/")):
            schema = schema[part]
    properties: dict[str, Any] = schema.get("properties", {})
    # Each default made anew per body (a container is never shared between bodies); an empty
    # one by its type, far cheaper than a deep copy.
    defaults = {key: _maker(sub["default"]) for key, sub in properties.items() if "default" in sub}
    nested = {
        key: fill
        for key, sub in properties.items()
        if (fill := _filler(sub, document, seen)) is not None
    }
    items = schema.get("items")
    each = _filler(items, document, seen) if isinstance(items, dict) else None
    if not (defaults or nested or each):
        return None

    def fill(data: Any) -> None:
        if isinstance(data, dict):
            for key, make in defaults.items():
                if key not in data:
                    data[key] = make()
            for key, fill_nested in nested.items():
                if key in data:
                    fill_nested(data[key])
        elif isinstance(data, list) and each is not None:
            for item in data:
                each(item)

    return fill


def _maker(default: Any) -> Callable[[], Any]:
    if isinstance(default, list | dict):
        return type(default) if not default else lambda: copy.deepcopy(default)
    return lambda: default


def field_of(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """The dotted path of the field at fault, naming a missing required property itself."""
    parts = [str(part) for part in (exc.path or ["data"])[1:]]
    if exc.rule == "required" and isinstance(exc.value, dict):
        missing = [name for name in exc.rule_definition if name not in exc.value]
        parts += missing[:1]
    return ".".join(parts) or "body"


async def read_json(req: falcon.Request, max_bytes: int, *, optional: bool = False) -> Any:
    """Read and parse a JSON body: 413 over the limit, 415 for another type, 400 if malformed."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise Problem(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
    raw = await req.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise Problem(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
    if optional and not raw.strip():
        return {}
    content_type = req.content_type
    # The type nearly every client sends is taken as is; any other is normalised, then matched.
    if content_type != "application/json" and not JSON_TYPE.match(
        (content_type or "").split(";", 1)[0].strip().lower()
    ):
        raise Problem(
            415, "unsupported_media_type", "send the body as Content-Type: application/json"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    # Only a body with that many brackets can be that deep: the walk is rarely needed.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise invalid(None, f"JSON must not nest deeper than {MAX_DEPTH} levels", "too_deep")
    if b"\\u0000" in raw and _has_nul(data):
        raise invalid(None, "strings must not contain NUL (\\u0000) characters", "nul_character")
    return data


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels (level by level: no recursion).

    Only containers are kept for the next level, so a wide body (a batch of a thousand
    receipts) costs one pass over its containers, not a tuple per scalar.
    """
    # Exact types, as orjson makes, and list comprehensions: half the CPU of isinstance
    # with a generator, on a batch of a hundred receipts.
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > limit:
            return True
        deeper: list[Any] = []
        for item in level:
            deeper += [
                child
                for child in (item.values() if type(item) is dict else item)
                if type(child) is dict or type(child) is list
            ]
        level = deeper
        depth += 1
    return False


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def validate(schema: str, data: Any) -> Any:
    """``data`` if it is valid against ``schema/<schema>``, with its defaults filled in;
    otherwise a 422 naming the field at fault."""
    if _is_valid(schema)(data):
        if (fill := _defaults(schema)) is not None:
            fill(data)
        return data
    try:
        # Found invalid: fastjsonschema says where and why (and would accept the body if the
        # two ever disagreed, as before the fast check).
        return validator(schema)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        field = field_of(exc)
        if exc.rule == "required":
            detail = f"{field} is required"
        else:
            detail = f"{field}: {exc.message.removeprefix(exc.name).strip()}"
        raise invalid(field, detail) from None


# Query parameters ------------------------------------------------------------------------


def _single(req: falcon.Request, name: str) -> str | None:
    value = req.params.get(name)
    if isinstance(value, list):
        raise invalid(name, f"query parameter {name} is given more than once")
    return value


def int_param(
    req: falcon.Request, name: str, default: int | None, low: int, high: int
) -> int | None:
    raw = _single(req, name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?\d{1,19}", raw) or not low <= int(raw) <= high:
        raise invalid(name, f"query parameter {name} must be an integer from {low} to {high}")
    return int(raw)


def choice_param(req: falcon.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    raw = _single(req, name)
    if raw is not None and raw not in allowed:
        raise invalid(name, f"query parameter {name} must be one of {', '.join(allowed)}")
    return raw


def text_param(req: falcon.Request, name: str, max_length: int = 255) -> str | None:
    raw = _single(req, name)
    if raw is not None and not 1 <= len(raw) <= max_length:
        raise invalid(name, f"query parameter {name} must be 1 to {max_length} characters")
    if raw is not None and "\x00" in raw:
        raise invalid(name, f"query parameter {name} must not contain NUL")
    return raw


def uuid_param(req: falcon.Request, name: str) -> str | None:
    raw = _single(req, name)
    return None if raw is None else parse_uuid(raw, name)


def path_id(raw: str, what: str) -> str:
    """An id from the URL path; one that is not a UUID cannot exist, so it is a 404."""
    try:
        return parse_uuid(raw, what)
    except falcon.HTTPError:
        raise Problem(
            404, "not_found", f"{what} {raw[:64]!r} does not exist in this tenant"
        ) from None


def parse_uuid(raw: str, field: str) -> str:
    # The canonical form, which nearly every id is, needs no uuid.UUID: lower() gives what
    # str(uuid.UUID(raw)) would. Anything else takes the general path, to parse exactly as it.
    if CANONICAL_UUID.fullmatch(raw):
        return raw.lower()
    try:
        return str(uuid.UUID(raw)) if len(raw) == 36 else _bad_uuid(field)
    except ValueError:
        return _bad_uuid(field)


def _bad_uuid(field: str) -> str:
    raise invalid(field, f"{field} must be a UUID such as 0b1c4a8e-8f0e-4f6b-9a52-1d2c3b4a5e6f")


def time_param(req: falcon.Request, name: str) -> datetime | None:
    raw = _single(req, name)
    if raw is None:
        return None
    # fromisoformat alone also takes ISO 8601 forms RFC 3339 excludes (no seconds, week dates).
    match = RFC3339.fullmatch(raw)
    value = None
    if match:
        minute = f"{match['minute']}:00{match['fraction'] or ''}{match['offset']}"
        try:
            value = datetime.fromisoformat(minute.upper())
        except ValueError:
            value = None
    if match is None or value is None:
        raise invalid(name, f"query parameter {name} must be an RFC 3339 time with an offset")
    try:
        return value.astimezone(UTC) + timedelta(seconds=int(match["second"]))
    except OverflowError:
        # Valid RFC 3339, but beyond year 1 or 9999 in UTC: as a bound it is "any time".
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)
