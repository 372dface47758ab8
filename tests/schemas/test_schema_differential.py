"""The published schemas and the worker agree on every body: ``jsonschema``'s verdict is the worker's admission verdict.

The schemas are read from ``schemas/`` (what a caller downloads) and judged by ``jsonschema``'s
Draft202012Validator with format checking. The worker's verdict comes from ``Pipeline.admit``, the
path every message takes (JSON decoding, envelope, routing, the command's model), fed the encoded bytes.
Bodies come from the schemas, from the models, and from the boundary values of every field.

Three checks of the worker cannot be said in JSON Schema; only there may the worker refuse a body the
schema accepts (never the other way round), and each is named in the schema's description: well-formed
domain XML in ``VmHandler.define``, a veth ``peer`` equal to its ``name``, and the non-ASCII characters
that Python's ``str.isprintable`` refuses in a device ``alias``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmworker.api.vm import xml_name
from kvmworker.app import build_registry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.protocol.codes import Code
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.schemas.bodies import boundary_values, from_model, from_schema, near

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
EXAMPLES = int(os.environ.get("KVT_SCHEMA_EXAMPLES", "40"))
# The same examples on every run (CI stays reproducible); KVT_FUZZ_RANDOM=1 explores new ones.
DERANDOMIZE = os.environ.get("KVT_FUZZ_RANDOM") != "1"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))

U = "5b0503ba-1af4-11ea-baa2-000c2902e179"
MAC = "52:54:00:ab:cd:ef"
VALID: dict[str, list[dict[str, Any]]] = {
    "NetworkHandler.create": [
        {"network_id": U, "network_type": "vlan", "physical_interface": "ens224", "vlan_id": "1001"},
        {"network_id": U, "network_type": "FLAT", "physical_interface": "bond0", "mtu": 9000},
    ],
    "NetworkHandler.delete": [{"network_id": U}],
    "NetworkHandler.show": [{"network_id": U}],
    "NamespaceHandler.create": [{"name": "kvtns1"}],
    "NamespaceHandler.delete": [{"name": "kvtns1"}],
    "NamespaceHandler.show": [{"name": "kvtns1"}],
    "DeviceHandler.create": [
        {"name": "kvtv0", "type": "veth", "peer": "kvtv1", "mtu": 1500, "mac": MAC, "namespace": "kvtns1"},
        {"name": "eth0.5", "type": "VLAN", "link": "eth0", "vlan_id": "5"},
        {"name": "vx1", "type": "vxlan", "vni": 100, "link": "eth0"},
        {"name": "br0", "type": "bridge"},
    ],
    "DeviceHandler.delete": [{"name": "kvtv0", "namespace": "kvtns1"}],
    "DeviceHandler.show": [{"name": "kvtv0"}],
    "DeviceHandler.list": [{"namespace": "kvtns1"}],
    "DeviceHandler.set": [
        {"name": "kvtv0", "state": "up", "mtu": "1500", "mac": MAC, "master": "br0", "netns": "ns2", "alias": "up"},
    ],
    "DeviceHandler.addr_add": [{"name": "kvtv0", "address": "10.0.0.1/24"}, {"name": "v", "address": "fd00::1/64"}],
    "DeviceHandler.addr_del": [{"name": "kvtv0", "address": "10.0.0.1/24"}],
    "VmHandler.shutdown": [{"name": "vm1", "timeout": 30, "force": True}],
    "VmHandler.autostart": [{"uuid": U, "enabled": False}],
    "VmHandler.undefine": [{"name": "vm1", "remove_storage": False}],
    "VmHandler.attach_interface": [
        {"name": "vm1", "network_id": U, "mac": MAC, "model": "e1000"},
        {"uuid": U, "bridge": "br0"},
    ],
    "VmHandler.detach_interface": [{"name": "vm1", "mac": MAC}],
    "VmHandler.define": [
        {
            "name": "vm1",
            "vcpus": "2",
            "memory_mib": 1024,
            "disks": [
                {"size_gib": 10, "pool": "default"},
                {"image": "/var/lib/kvt/a.qcow2", "bus": "sata"},
                {"clone_of": "base.qcow2", "volume": "vm1-root.qcow2"},
            ],
            "interfaces": [{"network_id": U}, {"bridge": "br0", "mac": MAC}],
            "domain_type": "kvm",
            "graphics": True,
        },
        {"xml": "<domain type='kvm'><name>vm1</name></domain>"},
    ],
    "VmHandler.list": [{"state": "running"}],
    "VmHandler.snapshot_create": [
        {"name": "vm1", "snapshot": "before-upgrade", "description": "x", "memory": True, "quiesce": False}
    ],
    "VmHandler.snapshot_revert": [{"uuid": U, "snapshot": "s1"}],
    "VmHandler.snapshot_delete": [{"name": "vm1", "snapshot": "s1", "children": True}],
    "VmHandler.stats": [{}, {"names": ["vm1", "vm2"]}],
    "VmHandler.migrate": [
        {"name": "vm1", "destination": "kvm-02.example"},
        {
            "uuid": U,
            "destination": "kvm-02",
            "live": True,
            "persistent": False,
            "max_downtime_ms": 300,
            "bandwidth_mib": 100,
            "auto_converge": True,
            "postcopy": True,
            "timeout": 600,
        },
    ],
    "HostHandler.services": [{"names": ["sshd.service", "getty@tty1.service"]}],
    "SystemHandler.result": [{"msg_id": U}],
    "SystemHandler.cancel": [{"msg_id": U}],
    "SystemHandler.operations": [{}, {"state": "running"}, {"state": "recent"}],
    "StorageHandler.volumes": [{"pool": "default"}, {}],
    "StorageHandler.volume_create": [
        {"name": "a.qcow2", "size_gib": 1.5},
        {"pool": "p", "name": "b", "format": "raw", "size_gib": 2},
    ],
    "StorageHandler.volume_clone": [
        {"name": "c.qcow2", "source": "base.qcow2"},
        {"pool": "p", "name": "d", "source": "/var/lib/kvt/base.img", "linked": False, "size_gib": 20},
    ],
    "StorageHandler.volume_resize": [{"name": "a.qcow2", "size_gib": 4}],
    "StorageHandler.volume_delete": [{"name": "a.qcow2", "pool": "p"}],
}
VM_REF = [{"name": "vm1"}, {"uuid": U}, {"name": "vm1", "uuid": U}]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    """The worker's own registry and pipeline; ``admit`` runs no command, so nothing on the host changes."""
    settings = Settings(host=unique("kvt-schema-"), state_dir=tmp_path_factory.mktemp("schema"))
    return Pipeline(build_registry(settings), host=settings.host)


@pytest.fixture(scope="module")
def published() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in SCHEMAS.glob("*.json")}


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


class Judges:
    """One command's two judges, and a tally of what they said."""

    def __init__(self, pipeline: Pipeline, schema: dict[str, Any], reply_schema: dict[str, Any], name: str):
        self.pipeline, self.schema, self.name = pipeline, schema, name
        self.handler, self.command = name.split(".")
        self.validator = validator(schema)
        self.replies = validator(reply_schema)
        self.seen: Counter[str] = Counter()

    def worker(self, data: Any) -> tuple[bool, dict[str, Any] | None]:
        envelope = {"handler": self.handler, "command": self.command, "data": data}
        body = json.dumps(envelope, ensure_ascii=False, allow_nan=False).encode()
        outcome = self.pipeline.admit(Delivery(body=body, content_type="application/json"))
        if isinstance(outcome, InFlight):
            return True, None
        return False, outcome.model_dump(mode="json")

    def agree(self, data: Any) -> None:
        schema_says = self.validator.is_valid(data)
        worker_says, reply = self.worker(data)
        if reply is not None:
            assert reply["code"] != Code.INTERNAL_ERROR, (self.name, data, reply)
            self.replies.validate(reply)
        self.seen["accepted" if worker_says else "refused"] += 1
        if schema_says == worker_says:
            return
        beyond = beyond_schema(self.name, data, reply) if schema_says else None
        assert beyond, (
            f"{self.name}: the schema says {'valid' if schema_says else 'invalid'}, the worker "
            f"{'admits' if worker_says else 'refuses'} {data!r}: {reply}"
        )
        self.seen[beyond] += 1


def beyond_schema(name: str, data: Any, reply: dict[str, Any] | None) -> str | None:
    """The one reason JSON Schema could not state for which the worker refused this (schema-valid) body."""
    detail = (reply or {}).get("data", {}).get("detail", "")
    if name == "VmHandler.define" and isinstance(data.get("xml"), str) and "xml" in detail:
        try:
            xml_name(data["xml"])
        except ValueError:
            return "xml is not a <domain> with a <name>"
    if name == "DeviceHandler.create" and data.get("peer") == data.get("name") and "name of its own" in detail:
        return "peer equals name"
    if name == "DeviceHandler.set" and "printable" in detail and not str(data.get("alias")).isprintable():
        return "alias not printable"
    return None


def commands(pipeline: Pipeline) -> list[str]:
    return sorted(f"{b.handler}.{b.name}" for b in pipeline.registry.commands())


def examples_for(name: str) -> list[dict[str, Any]]:
    if name in VALID:
        return VALID[name]
    if name.startswith("VmHandler.") and name != "VmHandler.list":
        return VM_REF
    return [{}]


def registry_commands() -> list[str]:
    return commands(Pipeline(build_registry(Settings(host="kvt-schema-ids"))))


COMMANDS = registry_commands()


@pytest.fixture
def judges(pipeline, published, request) -> Judges:
    name = request.param
    return Judges(pipeline, published[name], published["reply"], name)


def test_every_command_in_the_registry_has_a_published_schema_and_valid_examples_here(pipeline, published):
    assert set(commands(pipeline)) <= set(published)
    assert set(VALID) <= set(commands(pipeline)), "VALID names a command the worker does not have"


@pytest.mark.parametrize("judges", COMMANDS, indirect=True)
def test_the_valid_examples_are_valid_to_both_judges(judges):
    for example in examples_for(judges.name):
        assert judges.validator.is_valid(example), list(judges.validator.iter_errors(example))
        assert judges.worker(example)[0], judges.worker(example)[1]


@pytest.mark.parametrize("judges", COMMANDS, indirect=True)
def test_both_judges_agree_on_every_boundary_value_of_every_field(judges, published):
    for example in examples_for(judges.name):
        for body in mutations(example, judges.schema):
            judges.agree(body)
    assert judges.seen["accepted"] and judges.seen["refused"], judges.seen


def mutations(example: dict[str, Any], schema: dict[str, Any]):
    """Each field (and each field of the first item of a list of objects) set to each boundary value;
    each field left out; an unknown field added; and not an object at all."""
    yield from (None, [], "x", 1)
    yield {**example, "kvt_unknown": 1}
    for name in example:
        yield {k: v for k, v in example.items() if k != name}
    properties = schema.get("properties", {})
    for name in sorted(set(properties) | set(example)):
        sub = properties.get(name, {})
        for value in boundary_values(sub, schema):
            yield {**example, name: value}
        items = example.get(name)
        if isinstance(items, list) and items and isinstance(items[0], dict):
            item_schema = _item_schema(sub, schema)
            for field in sorted(set(item_schema.get("properties", {})) | set(items[0])):
                for value in boundary_values(item_schema.get("properties", {}).get(field, {}), schema):
                    yield {**example, name: [{**items[0], field: value}, *items[1:]]}


def _item_schema(sub: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    items = sub.get("items", {})
    if "$ref" in items:
        return root["$defs"][items["$ref"].rsplit("/", 1)[1]]
    return items


@pytest.mark.parametrize("judges", COMMANDS, indirect=True)
def test_both_judges_agree_on_bodies_drawn_from_the_published_schema(judges):
    @FUZZ
    @given(data=from_schema(judges.schema, judges.schema))
    def check(data):
        judges.agree(data)

    check()


@pytest.mark.parametrize("judges", COMMANDS, indirect=True)
def test_both_judges_agree_on_valid_examples_with_fields_redrawn_from_the_schema(judges):
    examples = examples_for(judges.name)

    @FUZZ
    @given(data=st.sampled_from(examples).flatmap(lambda example: near(example, judges.schema)))
    def check(data):
        judges.agree(data)

    check()
    assert judges.seen["accepted"], judges.seen  # near the examples, some bodies must still be valid


@pytest.mark.parametrize("judges", COMMANDS, indirect=True)
def test_both_judges_agree_on_bodies_drawn_from_the_model(judges, pipeline):
    handler, command = judges.name.split(".")
    model = pipeline.registry.lookup(handler, command).spec.model

    @FUZZ
    @given(data=from_model(model))
    def check(data):
        judges.agree(data)

    check()


# -- the envelope ------------------------------------------------------------------------------------


ENVELOPE = {"handler": "SystemHandler", "command": "ping", "data": {}}
ENVELOPE_FULL = ENVELOPE | {"msg_id": U, "dry_run": True, "timeout": 5, "token": "t"}


def worker_takes_envelope(pipeline: Pipeline, envelope: Any) -> bool:
    """The worker took the envelope unless it answered 20001 (an unknown handler is 20002: a valid envelope)."""
    body = json.dumps(envelope, ensure_ascii=False, allow_nan=False).encode()
    outcome = pipeline.admit(Delivery(body=body, content_type="application/json"))
    return isinstance(outcome, InFlight) or outcome.code != Code.INVALID_REQUEST


def test_the_envelope_schema_and_the_worker_agree_on_every_boundary_value(pipeline, published):
    schema = published["envelope"]
    check = validator(schema)
    seen = Counter()
    for example in (ENVELOPE, ENVELOPE_FULL):
        for body in mutations(example, schema):
            worker_says = worker_takes_envelope(pipeline, body)
            assert check.is_valid(body) == worker_says, body
            seen[worker_says] += 1
    assert seen[True] and seen[False]


@FUZZ
@given(envelope=st.data())
def test_the_envelope_schema_and_the_worker_agree_on_drawn_envelopes(pipeline, published, envelope):
    schema = published["envelope"]
    body = envelope.draw(from_schema(schema, schema))
    assert validator(schema).is_valid(body) == worker_takes_envelope(pipeline, body), body
