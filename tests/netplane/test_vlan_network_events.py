"""``network.state`` and ``link.state`` of VLAN networks, on a real kernel with 8021q (CI: the guest stage).

This machine's kernel has no 8021q; ``scripts/test.sh`` runs this file in a QEMU guest booted from a stock Debian
kernel (``needs_8021q``), where a missing VLAN kind is a failure.
"""

from __future__ import annotations

import uuid

import pytest

from kvmworker.netplane.networks import subinterface_name
from tests.netplane.conftest import Kernel, require_vlan_kernel
from tests.netplane.events import about

pytestmark = [pytest.mark.netlink, pytest.mark.needs_8021q]


@pytest.fixture(autouse=True)
def real_vlan_kernel(namespace: str) -> None:
    require_vlan_kernel(namespace)


def vlan(vlan_id: int) -> dict:
    return {"network_type": "vlan", "vlan_id": vlan_id}


def test_a_vlan_networks_subinterface_deleted_behind_the_workers_back_degrades_it_and_a_repeated_create_restores_it(
    watched, kernel: Kernel
):
    network_id = str(uuid.uuid4())
    sub = subinterface_name("ens224", 1001)
    create = watched.create(network_id, **vlan(1001))
    created = watched.recorded.wait_for(about("network", network_id, "created"))
    assert created.msg_id == create and created.data["subinterface"] == sub and created.data["health"] == "healthy"
    assert watched.recorded.wait_for(about("link", sub, "added")).msg_id == create
    mark = watched.recorded.mark()

    kernel.ip("link", "del", sub)

    degraded = watched.recorded.wait_for(about("network", network_id, "degraded"), after=mark)
    assert (degraded.reason, degraded.msg_id) == ("subinterface_gone", None)
    assert degraded.data["problems"] == [f"subinterface {sub} is missing"]
    assert watched.recorded.wait_for(about("link", sub, "removed"), after=mark).msg_id is None
    repair = watched.create(network_id, **vlan(1001))
    restored = watched.recorded.wait_for(about("network", network_id, "restored"), after=mark)
    assert restored.msg_id == repair and restored.data["resolved"] == ["subinterface_gone"]


def test_a_vlan_networks_uplink_losing_carrier_degrades_it_though_the_uplink_is_no_bridge_port(watched, kernel: Kernel):
    network_id = str(uuid.uuid4())
    sub = subinterface_name("ens224", 1002)
    watched.create(network_id, **vlan(1002))
    watched.recorded.wait_for(about("network", network_id, "created"))
    mark = watched.recorded.mark()

    kernel.ip("link", "set", "ens224p", "down")

    degraded = watched.recorded.wait_for(about("network", network_id, "degraded"), after=mark)
    assert degraded.reason == "uplink_carrier_lost" and degraded.msg_id is None
    assert watched.recorded.wait_for(about("link", "ens224", "down"), after=mark).data["carrier"] is False
    assert watched.recorded.wait_for(about("link", sub, "down"), after=mark).data["owner"] == f"network:{network_id}"
    kernel.ip("link", "set", "ens224p", "up")
    assert watched.recorded.wait_for(about("network", network_id, "restored"), after=mark).previous == "degraded"
