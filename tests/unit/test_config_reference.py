"""docs/configuration.md's reference is generated from config/schema.yaml: it must be current,
every key must have a description, and the renderer must show nested keys, types and defaults
the way validation reads them."""

from __future__ import annotations

import yaml

from promptcl.dag import config_reference as ref
from promptcl.show import main
from tests.helpers import REPO

SCHEMA = yaml.safe_load((REPO / ref.SCHEMA).read_text())

SMALL = {
    "description": "A small config.",
    "type": "object",
    "properties": {
        "model": {
            "description": "The model.",
            "type": "object",
            "default": {},
            "properties": {
                "precision": {
                    "description": "Precision.",
                    "type": "string",
                    "enum": ["auto", "bf16"],
                    "default": "auto",
                },
                "path": {"type": ["string", "null"]},  # no description, no default
                "inner": {
                    "description": "Nested.",
                    "type": "object",
                    "default": {},
                    "properties": {
                        "depth": {"description": "Depth.", "type": "integer", "minimum": 1}
                    },
                },
            },
        },
        "runs": {
            "description": "Runs <name>-s<seed>.",
            "type": "object",
            "properties": {
                "strategies": {
                    "description": "One of a|b.",
                    "type": "array",
                    "items": {"type": "string", "pattern": "^(a|b)$"},
                    "default": ["a"],
                },
                "processes": {
                    "description": "auto or a count.",
                    "oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer"}],
                    "default": "auto",
                },
                "extra": {
                    "description": "Explicit runs.",
                    "type": "array",
                    "default": [],
                    "items": {
                        "type": "object",
                        "required": ["seed"],
                        "properties": {"seed": {"description": "Seed.", "type": "integer"}},
                    },
                },
                "template": {"description": "T.", "type": "string", "default": "{a}\n\n{b}"},
            },
        },
        "data": {
            "description": "Caps.",
            "type": "object",
            "properties": {"train": {"$ref": "#/$defs/cap", "default": {"n": 10}}},
        },
        "sequences": {
            "description": "Named sequences.",
            "type": "object",
            "additionalProperties": {
                "description": "One sequence.",
                "type": "object",
                "properties": {"tasks": {"description": "Tasks.", "type": "array"}},
            },
        },
    },
    "$defs": {
        "cap": {
            "description": "A cap.",
            "type": "object",
            "properties": {
                "n": {"description": "Kept.", "type": ["integer", "null"], "default": None},
                "mode": {"description": "Which.", "type": "string", "default": "first"},
            },
        }
    },
}


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows by key: [type, default, description]."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_reference_in_docs_is_current():
    doc = (REPO / ref.DOC).read_text()
    assert ref.update(doc, SCHEMA) == doc, "docs/configuration.md is stale: run `make docs`"


def test_every_schema_key_has_a_description():
    assert ref.missing_descriptions(SCHEMA) == []


def test_every_top_level_section_gets_a_table():
    text = ref.render(SCHEMA)
    for section in SCHEMA["properties"]:
        assert f"### `{section}`" in text
    rows = _rows(text)
    assert rows["training.learning_rate"][1] == "`0.001`"
    assert rows["data.caps.train.n"][1] == "`1000`"  # the parent's default wins


def test_the_renderer_shows_nesting_types_and_defaults():
    text = ref.render(SMALL)
    rows = _rows(text)
    assert text.startswith("A small config.\n")
    assert [h for h in text.splitlines() if h.startswith("###")] == [
        "### `model`",
        "### `runs`",
        "### `data`",
        "### `sequences`",
    ]
    assert "model" not in rows  # a section is its heading, not a row
    assert rows["model.precision"] == ["one of `auto`, `bf16`", "`auto`", "Precision."]
    assert rows["model.path"] == ["string or null", "—", ""]
    assert rows["model.inner"] == ["object", "`{}`", "Nested."]
    assert rows["model.inner.depth"] == ["integer ≥ 1", "—", "Depth."]
    # pipes escaped in cells (code spans included), "<" outside code spans too
    assert rows["runs.strategies"] == [
        r"array of (string matching `^(a\|b)$`)",
        "`[a]`",
        r"One of a\|b.",
    ]
    assert "Runs &lt;name>-s&lt;seed>." in text
    assert rows["runs.processes"][:2] == ["one of `auto` or integer", "`auto`"]
    assert rows["runs.extra"][:2] == ["array of object", "`[]`"]
    assert rows["runs.extra[].seed"] == ["integer", "required", "Seed."]
    assert rows["runs.template"][1] == r'`"{a}\n\n{b}"`'  # newlines stay visible
    # a $ref resolved; the referring default fills its children, the rest keep their own
    assert rows["data.train"] == ["object", "`{n: 10}`", "A cap."]
    assert rows["data.train.n"][1] == "`10`"
    assert rows["data.train.mode"][1] == "`first`"
    assert rows["sequences.<name>"] == ["object", "—", "One sequence."]
    assert rows["sequences.<name>.tasks"] == ["array", "—", "Tasks."]
    assert ref.missing_descriptions(SMALL) == ["model.path"]


def test_the_command_rewrites_only_the_generated_part_and_check_fails_when_stale(tmp_path):
    schema, doc = tmp_path / "schema.yaml", tmp_path / "configuration.md"
    schema.write_text(yaml.safe_dump(SMALL))
    doc.write_text(f"# Intro\n\nProse kept.\n\n{ref.BEGIN}\nold\n{ref.END}\nAfter.\n")
    args = ["config-reference", "--schema", str(schema), "--doc", str(doc)]
    assert main([*args, "--check"]) == 1
    assert "old" in doc.read_text()  # --check never writes
    assert main(args) == 0
    text = doc.read_text()
    assert text.startswith("# Intro\n\nProse kept.\n\n") and text.endswith(f"{ref.END}\nAfter.\n")
    assert "| `model.precision` |" in text and "old" not in text
    assert main([*args, "--check"]) == 0
    doc.write_text("no markers\n")
    assert main(args) == 2
