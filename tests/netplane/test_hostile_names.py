"""Hostile names are refused at the edge with the right code and never reach the kernel.

The handlers here sit on a plane whose netlink opener fails the test if it is ever called: a name
that got past validation would open a namespace's sockets before anything else."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmworker.netplane.netlink import NETNS_RUN_DIR
from tests.netplane.conftest import Call, caller, handlers, make_plane

HOSTILE = [
    "../x", "a b", "$(id)", "`id`", "x%d", "x%n%s", "a" * 16, "x" * 300, "ünïcødé", "名字", "eth0;reboot", "x/y",
    "x\x00y", "a\nb", "-rf", "-", ".", "..", "", " ", "\u202eevil", "eth0\t", "%00", "${IFS}",
]  # fmt: skip
_VALID = re.compile(r"[A-Za-z0-9_.\-]+")


def is_valid_ifname(name: str) -> bool:
    return bool(_VALID.fullmatch(name)) and not name.startswith("-") and name not in (".", "..") and len(name) <= 15


def ifname_code(name: str) -> int:
    return 30005 if len(name.encode()) > 15 else 30006


hostile_ifnames = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40)).filter(lambda n: not is_valid_ifname(n))
hostile_namespaces = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=80)).filter(
    lambda n: not (_VALID.fullmatch(n) and not n.startswith("-") and n not in (".", "..") and len(n) <= 64)
)


@pytest.fixture(scope="module")
def before_namespaces() -> set[str]:
    return set(os.listdir(NETNS_RUN_DIR)) if os.path.isdir(NETNS_RUN_DIR) else set()


@pytest.fixture(scope="module")
def call(tmp_path_factory) -> Call:
    def kernel_reached(namespace):
        raise AssertionError(f"a hostile request reached netlink (namespace {namespace!r})")

    plane = make_plane(None, Path(tmp_path_factory.mktemp("state")), ["ens224"], opener=kernel_reached)
    return caller(*handlers(plane))


def network(physical_interface: str) -> dict:
    return {"network_id": str(uuid.uuid4()), "network_type": "vlan", "physical_interface": physical_interface,
            "vlan_id": "1001"}  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(name=hostile_ifnames)
def test_a_hostile_physical_interface_is_refused_before_netlink(call, name):
    reply = call("NetworkHandler", "create", network(name))
    assert reply.code == (30003 if name == "" else ifname_code(name)), reply
    assert reply.data["field"] == "physical_interface"


@settings(max_examples=150, deadline=None)
@given(name=hostile_ifnames)
def test_a_hostile_device_name_is_refused_in_every_device_command(call, name):
    for command, data in [
        ("create", {"name": name, "type": "bridge"}),
        ("create", {"name": "kvtv0", "type": "veth", "peer": name}),
        ("create", {"name": "kvtv0", "type": "vlan", "link": name, "vlan_id": 5}),
        ("delete", {"name": name}),
        ("set", {"name": name, "state": "up"}),
        ("set", {"name": "kvtv0", "master": name}),
        ("addr_add", {"name": name, "address": "10.0.0.1/24"}),
        ("show", {"name": name}),
    ]:
        reply = call("DeviceHandler", command, data)
        assert reply.code == ifname_code(name), (command, data, reply)


@settings(max_examples=150, deadline=None)
@given(name=hostile_namespaces)
def test_a_hostile_namespace_name_is_refused_and_no_file_appears(call, before_namespaces, name):
    for handler, command, data in [
        ("NamespaceHandler", "create", {"name": name}),
        ("NamespaceHandler", "delete", {"name": name}),
        ("NamespaceHandler", "show", {"name": name}),
        ("DeviceHandler", "list", {"namespace": name}),
        ("DeviceHandler", "set", {"name": "kvtv0", "netns": name}),
    ]:
        reply = call(handler, command, data)
        assert reply.code == 30006, (handler, command, data, reply)
    assert name not in set(os.listdir(NETNS_RUN_DIR)) - before_namespaces  # others may add namespaces meanwhile
