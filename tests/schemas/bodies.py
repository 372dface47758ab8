"""Bodies for the differential schema test: drawn from a JSON Schema, drawn from a pydantic model, and boundary values.

The generators aim near the edge of validity, not inside it: whether a body is valid is decided by the
two judges under test (``jsonschema`` and the worker), never here. (``hypothesis-jsonschema`` would draw
from the schemas, but its last release fails on objects with the hypothesis this project pins.)
"""

from __future__ import annotations

import functools
import json
import types
import typing
import uuid
from typing import Any

import annotated_types
from hypothesis import strategies as st
from pydantic import BaseModel

LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON = st.recursive(
    LEAVES,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=6,
)
NAMEISH = st.text(st.sampled_from("abcXYZ019_.-+:@/\\ \n\t\x00é٣"), max_size=20)


# -- from a JSON Schema ------------------------------------------------------------------------------


def from_schema(schema: Any, root: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values shaped by ``schema``: right types and bounds most of the time, anything JSON now and then."""
    key = json.dumps([schema, root], sort_keys=True)
    if key not in _MADE:
        shaped = _shaped(schema, root)
        _MADE[key] = st.one_of(*[shaped] * 7, JSON)
    return _MADE[key]


_MADE: dict[str, st.SearchStrategy[Any]] = {}


def _shaped(schema: Any, root: dict[str, Any]) -> st.SearchStrategy[Any]:
    if schema is True or schema == {}:
        return JSON
    if "$ref" in schema:
        return from_schema(root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            branches = [_shaped(branch | _siblings(schema, key), root) for branch in schema[key]]
            return st.one_of(*branches)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return _object(schema, root)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", True), root), max_size=min(schema.get("maxItems", 3), 3))
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        return st.integers(schema.get("minimum", -(10**6)) - 2, schema.get("maximum", 10**6) + 2)
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(10**6)))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 10**6))
        return st.floats(low - 1, high + 1, allow_nan=False) | st.integers(int(low) - 1, int(high) + 1)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


def _siblings(schema: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k in ("properties", "required", "type") and k != key}


@functools.cache
def _regex(pattern: str, high: int) -> st.SearchStrategy[str]:
    return st.from_regex(pattern).map(lambda s: s[: high + 1])


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
    if "pattern" in schema:
        return _regex(schema["pattern"], high)
    return st.text(min_size=max(low - 1, 0), max_size=min(high + 1, 60))


@st.composite
def _object(draw, schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    body = {}
    for name, sub in properties.items():
        wanted = draw(st.integers(0, 7)) > 0 if name in required else draw(st.booleans())
        if wanted:
            body[name] = draw(from_schema(sub, root))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(min_size=1, max_size=6))] = draw(JSON)
    return body


def near(example: dict[str, Any], schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid example with one or two fields redrawn from their schema, or left out."""
    properties = schema.get("properties", {})
    names = sorted(set(properties) | set(example))

    @st.composite
    def body(draw) -> dict[str, Any]:
        out = dict(example)
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)) if names else []:
            if draw(st.integers(0, 5)) == 0:
                out.pop(name, None)
            else:
                out[name] = draw(from_schema(properties.get(name, True), schema))
        return out

    return body()


# -- from a pydantic model ---------------------------------------------------------------------------


def from_model(model: type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies from the model's fields: each field's Python type and its bounds, in the forms JSON can carry."""

    @st.composite
    def body(draw) -> dict[str, Any]:
        out = {}
        for name, field in model.model_fields.items():
            if field.is_required() or draw(st.booleans()):
                out[name] = draw(_for_type(field.annotation, list(field.metadata)))
        if draw(st.integers(0, 9)) == 0:
            out["kvt_extra"] = draw(JSON)
        return out

    return body()


def _for_type(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _for_type(args[0], [*metadata, *annotation.__metadata__])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_for_type(arg, metadata) for arg in args))
    if origin is typing.Literal:
        words = [a for a in args if isinstance(a, str)]
        return st.sampled_from(args) | st.sampled_from(words).map(str.upper) | NAMEISH
    if origin is list:
        return st.lists(_for_type(args[0], []), max_size=3)
    if annotation is type(None):
        return st.none()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return from_model(annotation)
    low, high = _bounds(metadata)
    if annotation is bool:
        return st.booleans() | st.sampled_from(["true", "yes", 1, 0])
    if annotation is int:
        ints = st.integers(low - 2, high + 2)
        return ints | ints.map(str) | ints.map(float) | st.sampled_from(["+5", " 5", "5.0", "0x10", "٣"])
    if annotation is float:
        return st.floats(low - 1, high + 1, allow_nan=False) | st.integers(int(low) - 1, int(high) + 1).map(str)
    if annotation is uuid.UUID:
        return st.uuids().map(str) | st.uuids().map(lambda u: u.hex) | st.uuids().map(lambda u: f"{{{u}}}")
    if annotation is str:
        return NAMEISH | st.text(max_size=high + 2 if high < 10**6 else 300)
    return JSON


def _bounds(metadata: list[Any]) -> tuple[float, float]:
    low, high = -(10**6), 10**6
    for item in metadata:
        for constraint in getattr(item, "metadata", [item]):
            if isinstance(constraint, annotated_types.Ge | annotated_types.Gt):
                low = getattr(constraint, "ge", None) or getattr(constraint, "gt", None) or 0
            if isinstance(constraint, annotated_types.Le | annotated_types.Lt):
                high = getattr(constraint, "le", None) or getattr(constraint, "lt", None) or 0
            if isinstance(constraint, annotated_types.MaxLen):
                high = constraint.max_length
    return low, high


# -- boundary values ---------------------------------------------------------------------------------

GENERAL = [None, True, False, 0, -1, 1, 1.5, 5.0, "", " ", "1", "1.0", "+1", " 1", "1 ", "1\n", "٣", "１", "0x10"]
GENERAL += ["1e3", [], {}, "a" * 300, "x\n", "ABC", "-x", ".", "..", "...", "a/b", "a..b", "é", "\x00", "true"]
UUIDS = [
    "5B0503BA-1AF4-11EA-BAA2-000C2902E179",
    "5b0503ba1af411eabaa2000c2902e179",
    "urn:uuid:" + "5" * 8 + "-1af4-11ea-baa2-000c2902e179",
]
UUIDS += [
    "{5b0503ba-1af4-11ea-baa2-000c2902e179}",
    "5b0503ba-1af4-11ea-baa2-000c2902e17",
    "0x0503ba1af411eabaa2000c2902e179",
]
WORDS = ["VLAN", "Vlan", " vlan", "vlan ", "vlan\n", "FLAT", "flat", "VETH", "Vxlan", "UP", "Down", "KVM", "virtio"]
MACS = [
    "52:54:00:AB:CD:EF",
    "53:54:00:ab:cd:ef",
    "52-54-00-ab-cd-ef",
    "52:54:00:ab:cd:ef\n",
    "525400abcdef",
    "ff:ff:ff:ff:ff:ff",
]
CIDRS = ["10.0.0.1/24", "10.0.0.1", "10.0.0.1/255.255.255.0", "10.0.0.1/024", "10.0.0.256/24", "010.0.0.1/24"]
CIDRS += ["fd00::1/64", "fe80::1%eth0/64", "fd00::1/129", "::ffff:1.2.3.4/96", "1:2:3:4:5:6:7:8/128", "10.0.0.1/33"]


def boundary_values(schema: Any, root: dict[str, Any]) -> list[Any]:
    """The general pool, and each bound the schema names: below, at and above it, in every JSON form."""
    values = list(GENERAL) + UUIDS + WORDS + MACS + CIDRS
    for sub in _walk(schema, root):
        for key in ("minimum", "maximum", "exclusiveMinimum"):
            if key in sub:
                n = sub[key]
                for m in (n - 1, n, n + 1):
                    values += [m, str(m), float(m), "0" + str(m), str(m).zfill(10), str(m).zfill(11)]
                values += [n + 0.5, n - 0.5, str(n + 0.5)]
        for key in ("minLength", "maxLength"):
            if key in sub:
                n = sub[key]
                values += ["a" * max(n - 1, 0), "a" * n, "a" * (n + 1), "1" * n, "1" * (n + 1)]
        if "const" in sub:
            values.append(sub["const"])
        values += list(sub.get("enum", []))
    return _unique(values)


def _walk(schema: Any, root: dict[str, Any], depth: int = 0):
    if not isinstance(schema, dict) or depth > 4:
        return
    if "$ref" in schema:
        yield from _walk(root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root, depth + 1)
        return
    yield schema
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            yield from _walk(sub, root, depth + 1)
    if "items" in schema:
        yield from _walk(schema["items"], root, depth + 1)


def _unique(values: list[Any]) -> list[Any]:
    seen, out = set(), []
    for value in values:
        key = (type(value).__name__, repr(value))
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out
