"""``/openapi.json``: every handler/command body as a discriminated union, from the same pydantic models.

Every schema under ``components/schemas`` is JSON Schema 2020-12 (OpenAPI 3.1's dialect), made by
``kvmworker.schema.KvmJsonSchema`` like the files in ``schemas/``.

``handler`` discriminates first, then ``command`` within the handler, each branch naming the model of
its ``data``. Built from the commands as declared (``kvmworker.api.catalogue``) when the app is created, so a
handler added to the worker appears here without anyone writing it down, and without building one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kvmworker import __version__
from kvmworker.dispatch.commands import Declared
from kvmworker.observability.health import HEALTH_SCHEMA
from kvmworker.protocol.envelope import Envelope
from kvmworker.schema import KvmJsonSchema, model_schema, reply_schema

REF = "#/components/schemas/{model}"
CALL = "Call"
ENVELOPE_EXTRAS = ("msg_id", "dry_run", "timeout", "token")

Command = tuple[str, str, type[BaseModel]]


def build_openapi(declared: Iterable[Declared]) -> dict[str, Any]:
    commands = sorted(((d.handler, d.name, d.spec.model) for d in declared), key=lambda c: c[:2])
    schemas = _model_schemas(commands)
    schemas.update(_call_schemas(commands, schemas.pop("__refs__")))
    schemas["Reply"] = reply_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "kvmworker HTTP bridge", "version": __version__},
        "paths": _paths(),
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _model_schemas(commands: list[Command]) -> dict[str, Any]:
    models = list(dict.fromkeys(model for _, _, model in commands))
    refs, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template=REF, schema_generator=KvmJsonSchema
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["__refs__"] = {model: refs[(model, "validation")] for model in models}
    return schemas


def _call_schemas(commands: list[Command], refs: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    by_handler: dict[str, dict[str, str]] = {}
    extras = _envelope_extras()
    for handler, command, model in commands:
        name = f"{CALL}.{handler}.{command}"
        schemas[name] = _call_schema(handler, command, refs[model], extras)
        by_handler.setdefault(handler, {})[command] = REF.format(model=name)
    for handler, mapping in by_handler.items():
        schemas[f"{CALL}.{handler}"] = _union("command", mapping)
    schemas[CALL] = _union("handler", {h: REF.format(model=f"{CALL}.{h}") for h in by_handler})
    return schemas


def _call_schema(handler: str, command: str, data_ref: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "title": f"{handler}.{command}",
        "required": ["command", "handler", "data"],
        "properties": {
            "command": {"type": "string", "const": command},
            "handler": {"type": "string", "const": handler},
            "data": data_ref,
            **extras,
        },
    }


def _union(discriminator: str, mapping: dict[str, str]) -> dict[str, Any]:
    return {
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": discriminator, "mapping": mapping},
    }


def _envelope_extras() -> dict[str, Any]:
    properties = model_schema(Envelope, ref_template=REF)["properties"]
    return {name: properties[name] for name in ENVELOPE_EXTRAS}


def _paths() -> dict[str, Any]:
    post = _post_operation()
    host_param = {
        "name": "host",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,200}$"},
    }
    header_param = {"name": "X-KVM-Host", "in": "header", "required": False, "schema": {"type": "string"}}
    return {
        "/": {"post": {**post, "operationId": "call", "parameters": [header_param]}},
        "/hosts/{host}": {"post": {**post, "operationId": "call_host", "parameters": [host_param]}},
        "/healthz": {"get": _probe_operation("healthz", "The bridge process is alive.")},
        "/readyz": {"get": _probe_operation("readyz", "The broker can be reached (503 when not).", 503)},
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
            }
        },
    }


def _post_operation() -> dict[str, Any]:
    return {
        "summary": "Send one command to a host's worker; the reply is always HTTP 200 {code, msg, data}.",
        "security": [{}, {"bearer": []}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=CALL)}}},
        },
        "responses": {
            "200": {
                "description": "The reply",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Reply")}}},
            }
        },
    }


def _probe_operation(name: str, summary: str, *failure: int) -> dict[str, Any]:
    content = {"application/json": {"schema": HEALTH_SCHEMA}}
    responses = {"200": {"description": "ok", "content": content}}
    responses.update(
        {str(code): {"description": "unavailable, with the reason", "content": content} for code in failure}
    )
    return {"operationId": name, "summary": summary, "responses": responses}
