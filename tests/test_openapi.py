"""openapi.yaml is a valid OpenAPI 3.1 document, served self-contained, covering every route."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from asyncgate import PROJECT_ROOT, termination
from asyncgate.app import create_app
from asyncgate.settings import Settings
from asyncgate.validation import SCHEMA_DIR, SERVER_SHORTCUTS, validator

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def routed_operations(app: Any) -> set[tuple[str, str]]:
    """(method, URI template) for every responder a resource implements itself.

    Falcon fills the rest of each method map with its own 405 and OPTIONS responders.
    """
    found: set[tuple[str, str]] = set()

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None:
                found.update(
                    (method, node.uri_template)
                    for method, responder in node.method_map.items()
                    if getattr(responder, "__self__", None) is node.resource
                )
            walk(node.children)

    walk(app._router._roots)
    return found


def test_source_contract_is_valid_openapi_3_1() -> None:
    document, base_uri = read_from_filename(str(PROJECT_ROOT / "openapi.yaml"))
    assert document["openapi"].startswith("3.1")
    validate(document, base_uri=base_uri)


def test_served_contract_is_self_contained_and_valid(client: Any) -> None:
    result = client.get("/v1/openapi.yaml")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/yaml"
    document = yaml.safe_load(result.text)
    external = sorted({ref for ref in refs(document) if not ref.startswith("#/")})
    assert not external, f"non-local $refs in the served contract: {external}"
    validate(document)


def test_every_route_of_the_app_is_in_the_contract(tmp_path: Any) -> None:
    settings = Settings.from_env(
        {
            "ASYNCGATE_ENV": "test",
            "ASYNCGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'routes.db'}",
            "ASYNCGATE_API_KEY": "routes-test-key",
        }
    )
    routed = routed_operations(create_app(settings))
    documented = operations(yaml.safe_load((PROJECT_ROOT / "openapi.yaml").read_text()))
    assert routed, "no routes found: has Falcon's router changed shape?"
    assert routed - documented == set(), "routed but not in openapi.yaml"
    assert documented - routed == set(), "in openapi.yaml but not routed"


def test_every_operation_documents_its_refusals() -> None:
    document = yaml.safe_load((PROJECT_ROOT / "openapi.yaml").read_text())
    shared = document["components"]["parameters"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            codes = set(operation["responses"])
            name = f"{method.upper()} {path}"
            if operation.get("security") == []:
                continue
            assert {"401", "429", "503"} <= codes, name
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= codes, name
            if "{" in path:
                assert "404" in codes, name
            parameters = [
                shared[p["$ref"].rsplit("/", 1)[-1]] if "$ref" in p else p
                for p in operation.get("parameters", [])
            ]
            if any(p["in"] == "query" for p in parameters):
                assert "422" in codes, name


@pytest.mark.parametrize("path", sorted(SCHEMA_DIR.glob("*.json")), ids=lambda p: p.name)
def test_schema_files_suit_fastjsonschema_and_openapi_3_1(path: Any) -> None:
    text = path.read_text()
    # $id would rebase relative $refs for OpenAPI tools; prefixItems is unknown to draft-07.
    assert '"$id"' not in text and '"prefixItems"' not in text
    validator(path.name)


def test_receipt_types_in_the_schema_are_exactly_what_clients_may_write() -> None:
    schema = orjson.loads((SCHEMA_DIR / "receipt-create.json").read_bytes())
    assert tuple(schema["properties"]["type"]["enum"]) == termination.CLIENT_TYPES


def test_server_shortcuts_replace_definitions_that_exist() -> None:
    common = orjson.loads((SCHEMA_DIR / "common.json").read_bytes())
    assert set(SERVER_SHORTCUTS) <= set(common["$defs"])
