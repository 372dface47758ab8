"""VLAN networks, VLAN/VXLAN devices and bonds on a real kernel with 8021q and bonding.

This machine's kernel has neither, so CI runs this file inside a QEMU guest booted from a stock Debian kernel
(``scripts/guest-run.sh``, the "real kernel" stage of ``scripts/test.sh``). Everything is checked against the
kernel with iproute2, never with the code under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.handlers.network import NetworkHandler
from kvmworker.netplane.naming import bridge_name, network_alias
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.pool import NetlinkPool
from kvmworker.netplane.store import FILENAME, NetworkStore
from tests.conftest import unique
from tests.netplane.conftest import (
    DOCUMENTED_EXAMPLE,
    NICS,
    Kernel,
    caller,
    handlers,
    make_plane,
    require_vlan_kernel,
)

pytestmark = [pytest.mark.netlink, pytest.mark.needs_8021q]
EXAMPLE_ID = DOCUMENTED_EXAMPLE["network_id"]
BRIDGE = bridge_name(EXAMPLE_ID)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def real_vlan_kernel(namespace: str) -> None:
    """Inside the guest stage (KVT_REQUIRE_8021Q=1) a kernel without VLAN links is a failure, not a skip."""
    require_vlan_kernel(namespace)


def test_the_documented_example_is_a_tagged_vlan_on_the_interface_enslaved_to_the_bridge(call, kernel: Kernel):
    reply = call("NetworkHandler", "create", DOCUMENTED_EXAMPLE)
    assert reply.code == 0, reply.data
    assert reply.data["subinterface"] == "ens224.1001" and reply.data["vlan_id"] == 1001
    sub = kernel.link("ens224.1001")
    assert sub["linkinfo"]["info_kind"] == "vlan" and sub["linkinfo"]["info_data"]["id"] == 1001
    assert sub["link"] == "ens224" and sub["master"] == BRIDGE and "UP" in sub["flags"]
    assert sub["ifalias"] == network_alias(EXAMPLE_ID)
    assert kernel.link(BRIDGE)["ifalias"] == network_alias(EXAMPLE_ID) and "UP" in kernel.link(BRIDGE)["flags"]
    assert "master" not in kernel.link("ens224")


def test_show_list_and_delete_of_a_vlan_network(call, kernel: Kernel):
    assert call("NetworkHandler", "create", DOCUMENTED_EXAMPLE).code == 0
    again = call("NetworkHandler", "create", {**DOCUMENTED_EXAMPLE, "vlan_id": 1001})
    assert again.code == 0 and again.data["subinterface"] == "ens224.1001"
    shown = call("NetworkHandler", "show", {"network_id": EXAMPLE_ID})
    assert shown.code == 0 and shown.data["state"] == "ok" and not shown.data.get("drift")
    listed = call("NetworkHandler", "list").data["networks"]
    assert [(n["network_id"], n["vlan_id"]) for n in listed] == [(EXAMPLE_ID, 1001)]
    assert call("NetworkHandler", "delete", {"network_id": EXAMPLE_ID}).code == 0
    assert {"ens224.1001", BRIDGE}.isdisjoint(kernel.links()) and "ens224" in kernel.links()
    assert call("NetworkHandler", "list").data == {"networks": []}


def test_a_subinterface_deleted_behind_the_workers_back_is_drift_and_a_new_worker_restores_it(
    call, kernel: Kernel, namespace: str, state_dir: Path
):
    assert call("NetworkHandler", "create", DOCUMENTED_EXAMPLE).code == 0
    kernel.ip("link", "del", "ens224.1001")
    shown = call("NetworkHandler", "show", {"network_id": EXAMPLE_ID}).data
    assert shown["state"] != "ok" and any("ens224.1001" in d for d in shown["drift"]), shown

    after_restart = make_plane(namespace, state_dir, list(NICS))  # the worker owns the plane and closes it
    restarted = NetworkHandler(after_restart)
    try:
        restarted.on_start()
        sub = kernel.link("ens224.1001")
        assert sub["linkinfo"]["info_data"]["id"] == 1001 and sub["master"] == BRIDGE and "UP" in sub["flags"]
        assert caller(restarted)("NetworkHandler", "show", {"network_id": EXAMPLE_ID}).data["state"] == "ok"
    finally:
        after_restart.close()


def test_after_a_reboot_the_bridge_and_the_vlan_come_back(call, kernel: Kernel, namespace: str, state_dir: Path):
    second = str(uuid.uuid4())
    assert call("NetworkHandler", "create", DOCUMENTED_EXAMPLE).code == 0
    spec = {"network_id": second, "network_type": "vlan", "physical_interface": "ens225", "vlan_id": 42, "mtu": 1400}
    assert call("NetworkHandler", "create", spec).code == 0
    for name in ("ens224.1001", BRIDGE, "ens225.42", bridge_name(second)):  # what a reboot forgets
        kernel.ip("link", "del", name)

    after_restart = make_plane(namespace, state_dir, list(NICS))  # the worker owns the plane and closes it
    restarted = NetworkHandler(after_restart)
    try:
        restarted.on_start()
    finally:
        after_restart.close()
    links = kernel.links()
    assert links["ens225.42"]["master"] == bridge_name(second) and links["ens225.42"]["mtu"] == 1400
    assert links["ens224.1001"]["master"] == BRIDGE and links["ens224.1001"]["linkinfo"]["info_data"]["id"] == 1001


def test_device_handler_makes_vlan_and_vxlan_devices_on_an_allowed_interface(call, kernel: Kernel):
    kernel.ip("link", "set", "ens226", "up")
    vlan = call("DeviceHandler", "create", {"name": "kvtvl0", "type": "vlan", "link": "ens226", "vlan_id": 300})
    assert vlan.code == 0 and vlan.data["vlan_id"] == 300 and vlan.data["link"] == "ens226"
    assert vlan.data["state"] == "up"
    vxlan = call("DeviceHandler", "create", {"name": "kvtvx0", "type": "vxlan", "vni": 5001, "link": "ens226"})
    assert vxlan.code == 0 and vxlan.data["vni"] == 5001
    links = kernel.links()
    assert links["kvtvl0"]["linkinfo"]["info_kind"] == "vlan" and links["kvtvl0"]["linkinfo"]["info_data"]["id"] == 300
    assert (
        links["kvtvx0"]["linkinfo"]["info_kind"] == "vxlan" and links["kvtvx0"]["linkinfo"]["info_data"]["id"] == 5001
    )
    assert call("DeviceHandler", "delete", {"name": "kvtvl0"}).code == 0
    assert call("DeviceHandler", "delete", {"name": "kvtvx0"}).code == 0
    assert {"kvtvl0", "kvtvx0"}.isdisjoint(kernel.links())


def test_a_vlan_device_on_a_lower_device_that_is_down_is_made_down_rather_than_refused(call, kernel: Kernel):
    assert "UP" not in kernel.link("ens225")["flags"]
    vlan = call("DeviceHandler", "create", {"name": "kvtvl1", "type": "vlan", "link": "ens225", "vlan_id": 301})
    assert vlan.code == 0 and vlan.data["state"] == "down", vlan
    assert kernel.link("kvtvl1")["linkinfo"]["info_data"]["id"] == 301
    kernel.ip("link", "set", "ens225", "up")
    assert call("DeviceHandler", "set", {"name": "kvtvl1", "state": "up"}).code == 0
    assert "UP" in kernel.link("kvtvl1")["flags"]


@pytest.fixture
def bonded(namespace: str, state_dir: Path) -> Iterator[tuple[Kernel, object]]:
    """A bond of two NICs made by the host (as on a real hypervisor), and handlers on the default policy."""
    kernel = Kernel(namespace)
    kernel.ip("link", "add", "kvtbond0", "type", "bond", "mode", "active-backup")
    for nic in ("ens225", "ens226"):
        kernel.ip("link", "set", nic, "master", "kvtbond0")
    plane = Netplane(NetlinkPool(namespace), NetworkStore(state_dir / FILENAME), PhysicalInterfaces(None))
    yield kernel, caller(*handlers(plane))
    plane.close()


def test_a_bond_carries_flat_and_vlan_networks_by_default(bonded):
    kernel, call = bonded
    flat_id, vlan_id = str(uuid.uuid4()), str(uuid.uuid4())
    spec = {"network_id": vlan_id, "network_type": "vlan", "physical_interface": "kvtbond0", "vlan_id": 77}
    assert call("NetworkHandler", "create", spec).code == 0
    assert kernel.link("kvtbond0.77")["master"] == bridge_name(vlan_id)
    assert call("NetworkHandler", "delete", {"network_id": vlan_id}).code == 0
    flat = {"network_id": flat_id, "network_type": "flat", "physical_interface": "kvtbond0"}
    reply = call("NetworkHandler", "create", flat)
    assert reply.code == 0, reply.data
    assert kernel.link("kvtbond0")["master"] == bridge_name(flat_id)


def test_a_bond_holding_the_hosts_address_is_refused_by_default(bonded):
    kernel, call = bonded
    kernel.ip("addr", "add", "198.51.100.20/24", "dev", "kvtbond0")
    spec = {"network_id": str(uuid.uuid4()), "network_type": "flat", "physical_interface": "kvtbond0"}
    reply = call("NetworkHandler", "create", spec)
    assert reply.code == 30004 and "198.51.100.20/24" in reply.data["detail"]
    assert "master" not in kernel.link("kvtbond0")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve(namespace: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``kvmworker serve`` (the embedded default, memory://) operating in the test's namespace, and its token file."""
    port = _free_port()
    exe = shutil.which("kvmworker", path=str(Path(sys.executable).parent)) or "kvmworker"
    env = os.environ | {
        "KVMWORKER_NETNS": namespace,
        "KVMWORKER_PHYSICAL_INTERFACES": json.dumps(list(NICS)),
        "KVMWORKER_STATE_DIR": str(tmp_path / "state"),
    }
    log = (tmp_path / "serve.log").open("w")
    token = tmp_path / "token"
    command = [exe, "serve", "--port", str(port), "--host", unique("kvt-g-"), "--token-file", str(token)]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120  # imports are slow under emulation
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(url + "healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        yield url, token
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _post(serve: tuple[str, Path], envelope: dict) -> dict:
    url, token = serve
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token.read_text().strip()}"}
    request = urllib.request.Request(url, data=json.dumps(envelope).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_the_documented_example_end_to_end_through_the_http_bridge(serve: tuple[str, Path], kernel: Kernel):
    seed_body = {"command": "create", "handler": "NetworkHandler", "data": DOCUMENTED_EXAMPLE}
    reply = _post(serve, seed_body)
    assert (reply["code"], reply["msg"]) == (0, "成功"), reply
    assert kernel.link("ens224.1001")["master"] == BRIDGE
    shown = _post(serve, {"command": "show", "handler": "NetworkHandler", "data": {"network_id": EXAMPLE_ID}})
    assert shown["code"] == 0 and shown["data"]["state"] == "ok"
    gone = _post(serve, {"command": "delete", "handler": "NetworkHandler", "data": {"network_id": EXAMPLE_ID}})
    assert gone["code"] == 0 and {"ens224.1001", BRIDGE}.isdisjoint(kernel.links())
