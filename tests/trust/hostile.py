"""Hostile messages: hypothesis strategies over the envelope and each command's fields, and the classic attacks."""

from __future__ import annotations

import json
import pickle
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.protocol.codes import Code
from kvmworker.settings import Settings
from tests.conftest import unique

DOCUMENTED = {int(c) for c in Code}
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/x-python-serialize",
    "application/x-yaml",
    "text/plain",
    "",
]
NASTY_TEXT = [
    "",
    "\x00",
    "eth\x000",
    "../../../../etc/shadow",
    "/var/lib/libvirt/images/../../../etc/shadow",
    "..",
    ".",
    "-rf",
    "a" * 16,
    "设备名称网络设备名称过长",
    "ünïcødé-dév",
    "🦀🦀🦀🦀",
    "x" * 5000,
    "%s%n%x",
    "'; DROP TABLE entries; --",
    "${jndi:ldap://x}",
    "1001",
    "-1",
    "0x10",
    "1e400",
    "5b0503ba-1af4-11ea-baa2-000c2902e179",
]


@dataclass(frozen=True)
class Hostile:
    body: bytes
    content_type: str = "application/json"


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**60), max_value=10**60)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
        | st.sampled_from(NASTY_TEXT)
        | st.from_regex(r"\A[0-9]{1,60}\Z")
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    )


@st.composite
def envelopes(draw, registry: HandlerRegistry) -> dict[str, Any]:
    """An envelope aimed at a real command (its fields filled with hostile values) or at nothing at all."""
    commands = list(registry.commands())
    kind = draw(st.sampled_from(["command"] * 6 + ["unknown-command", "unknown-handler"]))
    bound = draw(st.sampled_from(commands))
    handler, command = bound.handler, bound.name
    fields, mutates = list(bound.spec.model.model_fields), bound.spec.mutates
    if kind == "unknown-command":
        command, fields, mutates = draw(st.text(min_size=1, max_size=64).filter(lambda c: c != bound.name)), [], False
    elif kind == "unknown-handler":
        handler, fields, mutates = draw(st.text(min_size=1, max_size=64)), [], False
    data = draw(
        st.one_of(
            st.fixed_dictionaries({}, optional={f: json_values() for f in fields}),
            st.fixed_dictionaries({}, optional={f: json_values() for f in fields}),
            st.dictionaries(st.text(max_size=12), json_values(), max_size=4),
            json_values(),
        )
    )
    envelope: dict[str, Any] = {"handler": handler, "command": command, "data": data}
    extras = {  # mostly well-formed, so that the fuzzing gets past the envelope into the commands
        "msg_id": st.one_of(st.uuids().map(str), st.uuids().map(str), json_values()),
        "dry_run": st.one_of(st.booleans(), st.booleans(), json_values()),
        "timeout": st.one_of(st.floats(min_value=0.001, max_value=100), st.floats(min_value=0.001), json_values()),
        "surprise": json_values(),
    }
    envelope |= draw(st.fixed_dictionaries({}, optional=extras))
    if kind == "command":  # the unknown ones keep their fields: they are there to reach routing (20002/20003)
        missing = draw(st.sampled_from([None] * 9 + ["handler", "command", "data"]))
        envelope.pop(missing, None)  # now and then a required field is missing
    if mutates:
        envelope["dry_run"] = True  # validated for real, but never allowed to change the host
    return envelope


@st.composite
def messages(draw, registry: HandlerRegistry) -> Hostile:
    """Mostly JSON envelopes, some arbitrary JSON, some raw bytes under any content type."""
    kind = draw(st.sampled_from(["envelope", "envelope", "envelope", "json", "bytes"]))
    if kind == "bytes":
        return Hostile(draw(st.binary(max_size=200)), draw(st.sampled_from(CONTENT_TYPES)))
    value = draw(envelopes(registry)) if kind == "envelope" else draw(json_values() | st.just(float("nan")))
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    return Hostile(text.encode("utf-8", "surrogatepass"), draw(st.sampled_from(CONTENT_TYPES[:3])))


def classics(storage_dir: Path) -> dict[str, tuple[Hostile, set[int]]]:
    """The issue's list, each with the codes it may be answered with."""
    ping = '{"handler":"SystemHandler","command":"ping","data":%s}'
    define = {
        "handler": "VmHandler",
        "command": "define",
        "dry_run": True,
        "data": {"name": "kvt-traversal", "disks": [{"image": f"{storage_dir}/../../../etc/shadow"}]},
    }
    return {
        "deep-nesting": (Hostile((ping % ("[" * 5000 + "]" * 5000)).encode()), {20001}),
        "5000-digit-integer": (Hostile((ping % ('{"n":' + "9" * 5000 + "}")).encode()), {20001}),
        "16-MiB-body": (Hostile((ping % ('{"pad":"' + "x" * (16 * 1024 * 1024) + '"}')).encode()), {20001}),
        "NUL-bytes": (Hostile(b"\x00" * 64 + b'{"handler":"SystemHandler"}'), {20001}),
        "NUL-in-a-device-name": (_device_show("eth\x000"), {30005, 30006}),
        "pickle": (Hostile(pickle.dumps({"handler": "SystemHandler"}), "application/x-python-serialize"), {20001}),
        "yaml": (Hostile(b'!!python/object/apply:os.system ["touch /tmp/kvt-pwned"]', "application/x-yaml"), {20001}),
        "unicode-device-name": (_device_show("设备名称"), {30005, 30006}),
        "emoji-device-name": (_device_show("🦀"), {30005, 30006}),
        "long-unicode-device-name": (_device_show("ü" * 8), {30005, 30006}),
        "path-traversal-in-a-disk": (Hostile(json.dumps(define).encode()), {30006}),
        "path-traversal-in-a-namespace": (_namespace_show("../../../proc/1/ns/net"), {30002, 30006}),
        **{f"raw-xml-{case}": (_define_xml(case, storage_dir), {30006}) for case in HOSTILE_XML},
        "path-traversal-in-a-clone-source": (_storage("volume_clone", source="../../../etc/shadow"), {30006}),
        "absolute-path-outside-as-a-clone-source": (_storage("volume_clone", source="/etc/shadow"), {30006}),
        "traversal-out-of-a-storage-dir-as-a-clone-source": (
            _storage("volume_clone", source=f"{storage_dir}/../../../etc/shadow"),
            {30006},
        ),
        "path-as-a-volume-name": (_storage("volume_create", name="../../etc/cron.d/x", size_gib=1), {30006}),
        "NUL-in-a-volume-name": (_storage("volume_delete", name="a\x00b"), {30006}),
        "path-as-a-pool-name": (_storage("volumes", pool="../../etc"), {30006}),
        "negative-volume-size": (_storage("volume_resize", name="kvt-v", size_gib=-1), {30006}),
        "huge-volume-size": (_storage("volume_create", name="kvt-v", size_gib=1e300), {30006}),
        "volume-size-as-a-string": (_storage("volume_create", name="kvt-v", size_gib="10"), {30006}),
        "clone-of-traversal-in-define": (_clone_of("/etc/shadow"), {30006}),
    }


def _clone_of(source: str) -> Hostile:
    disks = [{"clone_of": source, "pool": "default-pool"}]
    body = {"handler": "VmHandler", "command": "define", "dry_run": True, "data": {"name": "kvt-c", "disks": disks}}
    return Hostile(json.dumps(body).encode())


def _storage(command: str, **data: Any) -> Hostile:
    data = {"pool": "default-pool", "name": "kvt-fz-vol", **data}
    body = {"handler": "StorageHandler", "command": command, "dry_run": True, "data": data}
    return Hostile(json.dumps(body).encode())


HOSTILE_XML = ("namespaced-attribute", "qemu-commandline", "hostdev", "dtd-with-an-external-entity", "os-kernel")


def _define_xml(case: str, storage_dir: Path) -> Hostile:
    from tests.vm.hostile_xml import CASES  # domain XML that got past the old disk-only check (issue 13)

    xml = CASES[case].build("kvt-fz-xml", "test", storage_dir)
    body = {"handler": "VmHandler", "command": "define", "dry_run": True, "data": {"xml": xml}}
    return Hostile(json.dumps(body).encode())


def _device_show(name: str) -> Hostile:
    return Hostile(json.dumps({"handler": "DeviceHandler", "command": "show", "data": {"name": name}}).encode())


def _namespace_show(name: str) -> Hostile:
    return Hostile(json.dumps({"handler": "NamespaceHandler", "command": "show", "data": {"name": name}}).encode())


def assert_documented(reply: dict[str, Any]) -> None:
    """One reply object, a documented code with its exact text, and never an unexpected crash (99999)."""
    assert set(reply) == {"code", "msg", "data"}, reply
    assert reply["code"] in DOCUMENTED, reply
    assert reply["msg"] == Code(reply["code"]).msg, reply
    assert reply["code"] != Code.INTERNAL_ERROR, f"an unexpected error inside the worker: {reply}"


@contextmanager
def fuzz_settings(tmp: Path, **extra: Any) -> Iterator[Settings]:
    """A worker that cannot hurt the host: its own network namespace, libvirt's test driver, no usable NIC."""
    name = unique("kvt-fz-")
    subprocess.run(["ip", "netns", "add", name], check=True)
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    try:
        yield Settings(
            host=unique("kvt-fz-host-"),
            state_dir=tmp / "state",
            netns=name,
            libvirt_uri="test:///default",
            physical_interfaces=["kvtfz-none"],
            storage_dirs=[images],
            **extra,
        )
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def fresh_msg_id() -> str:
    return str(uuid.uuid4())
