"""Standard JSON Schemas (draft 2020-12) generated from the same pydantic models that validate the messages.

Every value type carries the schema of exactly what it accepts (``kvmworker.protocol.types``); every
model whose ``model_validator`` ties fields together states that rule under ``allOf``. ``KvmJsonSchema``
refuses to emit a keyword that JSON Schema 2020-12 does not define, so pydantic-only keywords (``ge``,
``le``…) cannot leak into ``schemas/`` or ``/openapi.json`` again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.events.model import Event
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX = "urn:kvmworker:schema:"
"""``$id`` of ``schemas/<name>.json`` is ``urn:kvmworker:schema:<name>``: stable, and the same in every clone."""

_CORE = "$schema $id $ref $defs $comment $anchor $dynamicRef $dynamicAnchor $vocabulary"
_APPLICATOR = (
    "allOf anyOf oneOf not if then else dependentSchemas prefixItems items contains properties patternProperties "
    "additionalProperties propertyNames unevaluatedItems unevaluatedProperties"
)
_VALIDATION = (
    "type enum const multipleOf maximum exclusiveMaximum minimum exclusiveMinimum maxLength minLength pattern "
    "maxItems minItems uniqueItems maxContains minContains maxProperties minProperties required dependentRequired"
)
_ANNOTATION = "format contentEncoding contentMediaType contentSchema title description default deprecated readOnly "
_ANNOTATION += "writeOnly examples"
KEYWORDS = frozenset(" ".join((_CORE, _APPLICATOR, _VALIDATION, _ANNOTATION)).split())
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_VALUE_KEYWORDS = frozenset({"enum", "const", "default", "examples", "required", "dependentRequired"})


class NonStandardKeyword(ValueError):
    pass


class KvmJsonSchema(GenerateJsonSchema):
    """pydantic's generator, held to JSON Schema 2020-12: an unknown keyword is an error, not a silent lie."""

    schema_dialect = DIALECT

    def generate(self, schema: CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        check_keywords(generated)
        return generated

    def generate_definitions(self, inputs):  # models_json_schema (the OpenAPI document) goes through here
        refs, definitions = super().generate_definitions(inputs)
        for definition in definitions.values():
            check_keywords(definition)
        return refs, definitions


def check_keywords(schema: Any, where: str = "#") -> None:
    """Raise on any keyword that JSON Schema 2020-12 does not define, anywhere in ``schema``."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise NonStandardKeyword(f"{where}: a schema is an object or a boolean, not {type(schema).__name__}")
    for key, value in schema.items():
        if key not in KEYWORDS:
            raise NonStandardKeyword(f"{where}: {key!r} is not a JSON Schema 2020-12 keyword")
        if key in _VALUE_KEYWORDS:
            continue
        if key in _SCHEMA_MAPS:
            for name, sub in value.items():
                check_keywords(sub, f"{where}/{key}/{name}")
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                check_keywords(sub, f"{where}/{key}/{i}")
        elif isinstance(value, dict | bool):
            check_keywords(value, f"{where}/{key}")


def model_schema(model: type[BaseModel], **kwargs: Any) -> dict[str, Any]:
    return model.model_json_schema(schema_generator=KvmJsonSchema, **kwargs)


def reply_schema() -> dict[str, Any]:
    """Every documented code with its exact text: a reply outside the table does not validate."""
    return {
        "type": "object",
        "title": "Reply",
        "required": ["code", "msg", "data"],
        "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}, "data": {}},
        "oneOf": [{"properties": {"code": {"const": int(code)}, "msg": {"const": code.msg}}} for code in Code],
    }


def build_schemas(registry: HandlerRegistry) -> dict[str, dict[str, Any]]:
    """File name → schema: the envelope, the reply, the event (§7), and each command's ``data``."""
    schemas = {"envelope.json": model_schema(Envelope), "reply.json": reply_schema(), "event.json": model_schema(Event)}
    for bound in registry.commands():
        schema = model_schema(bound.spec.model)
        schema["title"] = f"{bound.handler}.{bound.name}"
        schemas[f"{bound.handler}.{bound.name}.json"] = schema
    return {name: _published(name, schema) for name, schema in sorted(schemas.items())}


def _published(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    published = {"$schema": DIALECT, "$id": ID_PREFIX + name.removesuffix(".json"), **schema}
    check_keywords(published)
    return published


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write_schemas(registry: HandlerRegistry, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = build_schemas(registry)
    for stale in out.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, schema in wanted.items():
        path = out / name
        path.write_text(render(schema))
        written.append(path)
    return written
