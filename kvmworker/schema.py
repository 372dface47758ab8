"""JSON Schemas generated from the same pydantic models that validate the messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.protocol.envelope import Envelope, Reply


def build_schemas(registry: HandlerRegistry) -> dict[str, dict[str, Any]]:
    """File name → schema: the envelope, the reply, and each command's ``data``."""
    schemas = {"envelope.json": Envelope.model_json_schema(), "reply.json": Reply.model_json_schema()}
    for bound in registry.commands():
        schema = bound.spec.model.model_json_schema()
        schema["title"] = f"{bound.handler}.{bound.name}"
        schemas[f"{bound.handler}.{bound.name}.json"] = schema
    return dict(sorted(schemas.items()))


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
