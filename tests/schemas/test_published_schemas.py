"""``schemas/`` as a caller reads it: standard JSON Schema 2020-12, checked with ``jsonschema`` and the meta-schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema_specifications import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
FILES = sorted(SCHEMAS.glob("*.json"))

# The platform document's own example (seed/000_0e96325672e4b4e2.txt, "请求示例" of NetworkHandler.create),
# verbatim but for the Markdown escapes (network\_id) that its extraction added.
PLATFORM_EXAMPLE = """{ "command": "create", "handler": "NetworkHandler", "data": { "network_id":
"5b0503ba-1af4-11ea-baa2-000c2902e179", "network_type": "vlan", "physical_interface": "ens224", "vlan_id": "1001" } }"""


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def valid_envelope(envelope: dict[str, Any]) -> list[str]:
    """The envelope against envelope.json, its data against the command's schema: the errors, if any."""
    errors = [e.message for e in validator(load("envelope")).iter_errors(envelope)]
    command = SCHEMAS / f"{envelope['handler']}.{envelope['command']}.json"
    assert command.exists(), f"no schema for {envelope['handler']}.{envelope['command']}"
    return errors + [e.message for e in validator(json.loads(command.read_text())).iter_errors(envelope["data"])]


def standard_keywords() -> set[str]:
    """Every keyword the 2020-12 vocabularies define, read from the official meta-schemas."""
    keywords = set()
    for uri in REGISTRY:
        if uri.startswith("https://json-schema.org/draft/2020-12/meta/"):
            keywords |= set(REGISTRY.contents(uri).get("properties", {}))
    return keywords


def unknown_keywords(schema: Any, known: set[str], where: str = "#") -> list[str]:
    if not isinstance(schema, dict):
        return []
    found = [f"{where}/{key}" for key in schema if key not in known]
    for key, value in schema.items():
        if key in ("properties", "$defs", "patternProperties", "dependentSchemas"):
            for name, sub in value.items():
                found += unknown_keywords(sub, known, f"{where}/{key}/{name}")
        elif key in ("allOf", "anyOf", "oneOf", "prefixItems"):
            for i, sub in enumerate(value):
                found += unknown_keywords(sub, known, f"{where}/{key}/{i}")
        elif key in ("items", "not", "if", "then", "else", "additionalProperties", "propertyNames", "contains"):
            found += unknown_keywords(value, known, f"{where}/{key}")
    return found


def test_there_are_schemas_to_check():
    assert len(FILES) > 10 and {"envelope.json", "reply.json"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_schema_is_a_valid_draft_2020_12_schema_with_its_dialect_and_a_stable_id(path):
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator
    assert schema["$schema"] == DIALECT
    assert schema["$id"] == f"urn:kvmworker:schema:{path.stem}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_each_schema_uses_only_keywords_that_json_schema_2020_12_defines(path):
    known = standard_keywords()
    assert {"minimum", "maximum", "pattern", "if"} <= known  # the meta-schemas were read
    assert unknown_keywords(json.loads(path.read_text()), known) == []


def test_the_platform_documents_own_example_is_valid():
    assert valid_envelope(json.loads(PLATFORM_EXAMPLE)) == []


def test_what_the_worker_refuses_the_schema_refuses_too():
    example = json.loads(PLATFORM_EXAMPLE)
    data = example["data"]
    for wrong in (
        {"vlan_id": 99999},
        {"vlan_id": "99999"},
        {"vlan_id": 0},
        {"mtu": 5},
        {"mtu": "5"},
        {"vlan_id": True},
    ):
        assert valid_envelope(example | {"data": data | wrong}), wrong
    for right in ({"vlan_id": 1001}, {"vlan_id": "4094"}, {"mtu": 9000}, {"mtu": "1500"}, {"network_type": "VLAN"}):
        assert valid_envelope(example | {"data": data | right}) == [], right
    flat = data | {"network_type": "flat"}
    assert valid_envelope(example | {"data": flat}), "a flat network takes no vlan_id"
    assert valid_envelope(example | {"data": {k: v for k, v in flat.items() if k != "vlan_id"}}) == []


def documented_envelopes() -> list[tuple[str, dict[str, Any]]]:
    """Every complete envelope written as JSON in the README and docs/ (not those with '…' placeholders)."""
    found = []
    decoder = json.JSONDecoder()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for start in (m.start() for m in re.finditer(r'\{\s*"(?:command|handler)"', text)):
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            placeholder = "…" in json.dumps(value, ensure_ascii=False)
            if {"handler", "command", "data"} <= set(value) and value["handler"] != "UserHandler" and not placeholder:
                found.append((f"{path.name}:{text.count(chr(10), 0, start) + 1}", value))
    return found


def test_every_envelope_in_the_readme_and_the_docs_is_valid():
    envelopes = documented_envelopes()
    assert len(envelopes) >= 5, envelopes
    failures = {where: errors for where, envelope in envelopes if (errors := valid_envelope(envelope))}
    assert failures == {}
