"""NamespaceHandler on the real machine: only namespaces it made are deleted, never the worker's own."""

from __future__ import annotations

import os

import pytest

from tests.conftest import unique
from tests.netplane.conftest import ip

pytestmark = pytest.mark.netlink


@pytest.fixture
def fresh_name():
    name = unique("kvt-ns-")
    yield name
    if os.path.exists(f"/run/netns/{name}"):
        ip("netns", "del", name)


def test_a_namespace_is_created_listed_shown_and_deleted(call, fresh_name):
    assert call("NamespaceHandler", "create", {"name": fresh_name}).data == {"name": fresh_name, "created": True}
    assert fresh_name in ip("netns", "list")
    again = call("NamespaceHandler", "create", {"name": fresh_name})
    assert again.code == 0 and again.data["created"] is False
    listed = {n["name"]: n["owned"] for n in call("NamespaceHandler", "list").data["namespaces"]}
    assert listed[fresh_name] is True
    call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge", "namespace": fresh_name})
    call("DeviceHandler", "addr_add", {"name": "kvtbr0", "address": "10.1.0.1/24", "namespace": fresh_name})
    shown = call("NamespaceHandler", "show", {"name": fresh_name}).data
    devices = {d["name"]: d for d in shown["devices"]}
    assert devices["kvtbr0"]["addresses"] == ["10.1.0.1/24"] or "10.1.0.1/24" in devices["kvtbr0"]["addresses"]
    assert set(devices) == {"lo", "kvtbr0"}
    assert call("NamespaceHandler", "delete", {"name": fresh_name}).code == 0
    assert fresh_name not in ip("netns", "list")
    assert call("NamespaceHandler", "show", {"name": fresh_name}).code == 30002
    assert call("NamespaceHandler", "delete", {"name": fresh_name}).code == 30002


def test_namespaces_the_worker_did_not_make_and_its_own_are_not_deleted(call, namespace, fresh_name):
    ip("netns", "add", fresh_name)
    foreign = call("NamespaceHandler", "delete", {"name": fresh_name})
    assert foreign.code == 30004 and "not created by this worker" in foreign.data["detail"]
    assert call("NamespaceHandler", "create", {"name": fresh_name}).code == 30006
    assert call("NamespaceHandler", "delete", {"name": namespace}).code == 30004
    assert fresh_name in ip("netns", "list") and namespace in ip("netns", "list")


def test_a_namespace_deleted_and_made_again_behind_the_workers_back_is_not_confused_with_the_old_one(call, fresh_name):
    call("NamespaceHandler", "create", {"name": fresh_name})
    call("DeviceHandler", "create", {"name": "kvtbr0", "type": "bridge", "namespace": fresh_name})
    ip("netns", "del", fresh_name)
    ip("netns", "add", fresh_name)
    listed = call("DeviceHandler", "list", {"namespace": fresh_name}).data["devices"]
    assert [d["name"] for d in listed] == ["lo"]


def test_dry_run_makes_no_namespace(call, fresh_name):
    reply = call("NamespaceHandler", "create", {"name": fresh_name}, dry_run=True)
    assert reply.data == {"dry_run": True, "plan": [{"op": "netns_add", "name": fresh_name}]}
    assert fresh_name not in ip("netns", "list")


def test_a_dry_run_of_delete_keeps_the_namespace_and_of_a_second_create_plans_nothing(call, fresh_name):
    call("NamespaceHandler", "create", {"name": fresh_name})
    assert call("NamespaceHandler", "create", {"name": fresh_name}, dry_run=True).data == {"dry_run": True, "plan": []}
    reply = call("NamespaceHandler", "delete", {"name": fresh_name}, dry_run=True)
    assert reply.data == {"dry_run": True, "plan": [{"op": "netns_del", "name": fresh_name}]}
    assert fresh_name in ip("netns", "list")
    assert call("NamespaceHandler", "show", {"name": fresh_name}).data["owned"] is True
