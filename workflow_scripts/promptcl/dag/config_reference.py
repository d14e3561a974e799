"""The configuration reference (docs/configuration.md), generated from ``config/schema.yaml`` so
that the documented keys, types and defaults cannot drift from what validation enforces (as
PyPSA-Eur generates its configuration tables). ``python -m promptcl config-reference`` (``make
docs``) rewrites the part between the markers; ``--check`` only reports whether it is stale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

SCHEMA = "config/schema.yaml"
DOC = "docs/configuration.md"
BEGIN = "<!-- generated from config/schema.yaml: make docs -->"
END = "<!-- end of the generated part -->"
_BOUNDS = (
    ("minimum", "≥"),
    ("exclusiveMinimum", ">"),
    ("maximum", "≤"),
    ("exclusiveMaximum", "<"),
)


class StaleReference(ValueError):
    """The document has no generated part to replace."""


def _resolve(node: dict, root: dict) -> dict:
    """``node`` with a local ``$ref`` merged in (the referring node's own keys win)."""
    ref = node.get("$ref")
    if not ref:
        return node
    target: dict = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    merged = {**_resolve(target, root), **node}
    merged.pop("$ref")
    return merged


def _value(value) -> str:
    """A default as inline YAML, the way it would be written in the config (strings with
    control characters double-quoted, so that "\\n" stays visible)."""
    if isinstance(value, str) and not value.isprintable():
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_value(k)}: {_value(v)}" for k, v in value.items()) + "}"
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _group(text: str) -> str:
    return f"({text})" if " " in text else text


def _type(node: dict, root: dict) -> str:
    node = _resolve(node, root)
    if "oneOf" in node or "anyOf" in node:
        return " or ".join(_type(alt, root) for alt in node.get("oneOf", node.get("anyOf")))
    if "enum" in node:
        return "one of " + ", ".join(f"`{_value(v)}`" for v in node["enum"])
    types = node.get("type", "any")
    types = [types] if isinstance(types, str) else list(types)
    parts = []
    for kind in types:
        if kind == "array":
            items = node.get("items")
            kind = f"array of {_group(_type(items, root))}" if items else "array"
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            if "properties" not in node:
                kind = f"mapping of name to {_group(_type(node['additionalProperties'], root))}"
        elif kind == "string" and "pattern" in node:
            kind = f"string matching `{node['pattern']}`"
        parts.append(kind)
    text = " or ".join(parts)
    bounds = [f"{sign} {_value(node[key])}" for key, sign in _BOUNDS if key in node]
    return f"{text} {', '.join(bounds)}" if bounds else text


def _prose(text: str) -> str:
    """One line of Markdown; "<" outside code spans escaped so that e.g. <task> is no HTML tag."""
    parts = " ".join(str(text).split()).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    """A table cell: prose with its pipes escaped (GFM unescapes them inside code spans too)."""
    return _prose(text).replace("|", "\\|")


_MISSING = object()


def _rows(key: str, node: dict, root: dict, default=_MISSING, required: bool = False) -> list:
    """(key, type, default, description) for ``node`` and everything nested in it.

    ``default`` is what the parent's default gives this key (it wins over the key's own, as
    validation fills the parent first); the children of an object inherit from its default.
    """
    node = _resolve(node, root)
    if default is _MISSING:
        default = node.get("default", _MISSING)
    if default is not _MISSING:
        shown = f"`{_value(default)}`"
    else:
        shown = "required" if required else "—"
    rows = [(key, _type(node, root), shown, node.get("description", ""))]
    inherited = default if isinstance(default, dict) else {}
    rows += _children(key, node, root, inherited)
    return rows


def _children(key: str, node: dict, root: dict, inherited: dict) -> list:
    rows = []
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        rows += _rows(
            f"{key}.{name}" if key else name,
            child,
            root,
            inherited.get(name, _MISSING),
            name in required,
        )
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in _resolve(extra, root):
        rows += _rows(f"{key}.<name>", extra, root)
    items = node.get("items")
    if isinstance(items, dict) and "properties" in _resolve(items, root):
        rows += _children(f"{key}[]", _resolve(items, root), root, {})
    return rows


def render(schema: dict) -> str:
    """The reference: one table per top-level section (key, type, default, description)."""
    parts = []
    if schema.get("description"):
        parts.append(_prose(schema["description"]) + "\n")
    for section, node in schema.get("properties", {}).items():
        node = _resolve(node, schema)
        lines = [f"### `{section}`", ""]
        if node.get("description"):
            lines += [_prose(node["description"]), ""]
        rows = _rows(section, node, schema)
        if node.get("type") == "object" and len(rows) > 1:
            rows = rows[1:]  # the section itself is the heading
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {_cell(t)} | {_cell(d)} | {_cell(text)} |" for k, t, d, text in rows]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def missing_descriptions(schema: dict) -> list[str]:
    """Every key of the schema without a description (dotted, as in the reference)."""
    return [key for key, _, _, text in _rows("", schema, schema)[1:] if not text.strip()]


def update(document: str, schema: dict) -> str:
    """``document`` with its generated part replaced by the reference of ``schema``."""
    head, begin, rest = document.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise StaleReference(f"the document has no generated part ({BEGIN} … {END})")
    return f"{head}{BEGIN}\n\n{render(schema)}\n{END}{tail}"


def main(check: bool = False, schema_path: Path = Path(SCHEMA), doc_path: Path = Path(DOC)):
    """Rewrite the document's reference; with ``check``, only say whether it is current.

    Returns (message, exit status): 1 when ``check`` finds the document stale.
    """
    schema = yaml.safe_load(schema_path.read_text())
    current = doc_path.read_text()
    wanted = update(current, schema)
    if current == wanted:
        return f"{doc_path} is up to date with {schema_path}\n", 0
    if check:
        return f"{doc_path} is stale: run `make docs`\n", 1
    doc_path.write_text(wanted)
    return f"{doc_path} regenerated from {schema_path}\n", 0
