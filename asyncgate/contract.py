"""The served contract: openapi.yaml with every schema/ file bundled in, so every $ref is local.

Client generators refuse references to other files; this document stands alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import yaml

from asyncgate import PROJECT_ROOT


def _camel(text: str) -> str:
    return "".join(
        part[:1].upper() + part[1:] for part in text.replace("-", "_").split("_") if part
    )


class _Bundler:
    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components
        self.names: dict[tuple[Path, str], str] = {}
        self.files: dict[Path, Any] = {}

    def _load(self, path: Path) -> Any:
        if path not in self.files:
            self.files[path] = orjson.loads(path.read_bytes())
        return self.files[path]

    def _name(self, path: Path, pointer: str) -> str:
        base = _camel(pointer.rsplit("/", 1)[-1]) if pointer else _camel(path.stem)
        name, n = base, 2
        while name in self.components:
            name, n = f"{base}{n}", n + 1
        return name

    def target(self, base: Path, ref: str) -> str:
        file_part, _, pointer = ref.partition("#")
        path = (base.parent / file_part).resolve() if file_part else base
        key = (path, pointer)
        if key not in self.names:
            name = self._name(path, pointer)
            self.names[key] = name
            self.components[name] = {}  # reserve the name before recursing
            node = self._load(path)
            for part in filter(None, pointer.split("/")):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            node = copy.deepcopy(node)
            node.pop("$defs", None)
            self.components[name] = self.rewrite(node, path)
        return f"#/components/schemas/{self.names[key]}"

    def rewrite(self, node: Any, base: Path) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not (base.suffix == ".yaml" and ref.startswith("#")):
                return {**node, "$ref": self.target(base, ref)}
            return {key: self.rewrite(value, base) for key, value in node.items()}
        if isinstance(node, list):
            return [self.rewrite(item, base) for item in node]
        return node


def bundled_document(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    source = (root / "openapi.yaml").resolve()
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    bundler = _Bundler(schemas)
    for name, node in list(schemas.items()):
        schemas[name] = bundler.rewrite(node, source)
    for key, value in list(document.items()):
        if key != "components":
            document[key] = bundler.rewrite(value, source)
    for key, value in list(components.items()):
        if key != "schemas":
            components[key] = bundler.rewrite(value, source)
    return document


def bundled_yaml(root: Path = PROJECT_ROOT) -> bytes:
    return yaml.safe_dump(bundled_document(root), sort_keys=False, allow_unicode=True).encode()
