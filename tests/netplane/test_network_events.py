"""``link.state`` and ``network.state`` events from the kernel's link notifications, in a namespace of the test's own.

The network handlers and the watch run as the worker wires them (``start_network_watch``) against the test's
namespace, with the worker's real ``Emitter``; commands go through ``Pipeline.handle`` as raw JSON, and the
changes "behind the worker's back" are made with ``ip``, as an operator would.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest

from kvmworker.events import Events
from kvmworker.events.state import WorkerState
from kvmworker.netplane.monitor import LinkMonitor
from kvmworker.netplane.naming import bridge_name, network_alias
from kvmworker.netplane.sink import SYNC_AFTER_OVERRUN
from kvmworker.netplane.watch import NetworkWatch, start_network_watch
from tests.netplane.conftest import NICS, Kernel, caller, flat, handlers, ip, make_plane
from tests.netplane.events import Recorded, about

pytestmark = pytest.mark.netlink


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_bridge_deleted_behind_the_workers_back_degrades_its_network_within_a_second(watched, kernel: Kernel):
    network_id = new_id()
    bridge = bridge_name(network_id)
    watched.create(network_id)
    watched.recorded.wait_for(about("network", network_id, "created"))
    mark = watched.recorded.mark()

    started = time.monotonic()
    kernel.ip("link", "del", bridge)
    degraded = watched.recorded.wait_for(about("network", network_id, "degraded"), after=mark)
    assert time.monotonic() - started <= 1.0, "the issue asks for the event within 1 s"

    assert (degraded.reason, degraded.previous, degraded.msg_id) == ("bridge_gone", "healthy", None)
    assert degraded.data["problems"] == [f"bridge {bridge} is missing"] and degraded.data["name"] == bridge
    watched.recorded.quiet()
    assert [e.state for e in watched.recorded.since(mark, about("network"))] == ["degraded"], "one act, one event"
    removed = watched.recorded.since(mark, about("link", bridge, "removed"))
    assert len(removed) == 1 and removed[0].msg_id is None
    # the NIC was released from the deleted bridge; it was not removed (the bridge's AF_BRIDGE copies are not read)
    assert watched.recorded.since(mark, about("link", "ens224")) == []


def test_a_bridge_put_back_by_hand_restores_the_network_and_no_command_is_named(watched, kernel: Kernel):
    network_id = new_id()
    bridge = bridge_name(network_id)
    watched.create(network_id)
    watched.recorded.wait_for(about("network", network_id, "created"))
    kernel.ip("link", "del", bridge)
    watched.recorded.wait_for(about("network", network_id, "degraded"))
    mark = watched.recorded.mark()

    commands = [
        f"link add {bridge} type bridge",
        f"link set {bridge} alias {network_alias(network_id)}",
        f"link set ens224 master {bridge}",
        f"link set {bridge} up",
    ]
    subprocess.run(["ip", "-n", kernel.namespace, "-batch", "-"], input="\n".join(commands), text=True, check=True)

    restored = watched.recorded.wait_for(about("network", network_id, "restored"), after=mark)
    assert (restored.previous, restored.msg_id, restored.reason) == ("degraded", None, None)
    assert restored.data["health"] == "healthy" and restored.data["resolved"] == ["bridge_gone"]


def test_a_repeated_create_that_repairs_a_network_publishes_restored_with_its_msg_id(watched, kernel: Kernel):
    network_id = new_id()
    watched.create(network_id)
    watched.recorded.wait_for(about("network", network_id, "created"))
    kernel.ip("link", "set", "ens224", "nomaster")
    degraded = watched.recorded.wait_for(about("network", network_id, "degraded"))
    assert degraded.reason == "enslavement_lost" and degraded.msg_id is None
    assert degraded.data["problems"] == [f"physical interface ens224 is not enslaved to {bridge_name(network_id)}"]
    mark = watched.recorded.mark()

    repair = watched.create(network_id)

    restored = watched.recorded.wait_for(about("network", network_id, "restored"), after=mark)
    assert restored.msg_id == repair and restored.data["resolved"] == ["enslavement_lost"]
    watched.recorded.quiet()
    assert [e.state for e in watched.recorded.since(mark, about("network"))] == ["restored"]


def test_the_uplinks_veth_peer_set_down_is_link_down_and_a_degraded_network_and_up_again_restores(
    watched, kernel: Kernel
):
    network_id = new_id()
    watched.create(network_id)
    watched.recorded.wait_for(about("network", network_id, "created"))
    mark = watched.recorded.mark()

    kernel.ip("link", "set", "ens224p", "down")  # the switch's end of the cable

    down = watched.recorded.wait_for(about("link", "ens224", "down"), after=mark)
    assert (down.previous, down.msg_id) == ("up", None)
    assert down.data["carrier"] is False and down.data["state"] == "up", "administratively up, without carrier"
    assert down.data["master"] == bridge_name(network_id) and down.data["owner"] is None
    degraded = watched.recorded.wait_for(about("network", network_id, "degraded"), after=mark)
    assert (degraded.reason, degraded.previous, degraded.msg_id) == ("uplink_carrier_lost", "healthy", None)
    assert degraded.data["problems"] == ["physical interface ens224 has no carrier"]

    kernel.ip("link", "set", "ens224p", "up")
    assert watched.recorded.wait_for(about("link", "ens224", "up"), after=mark).previous == "down"
    restored = watched.recorded.wait_for(about("network", network_id, "restored"), after=mark)
    assert restored.data["resolved"] == ["uplink_carrier_lost"]
    watched.recorded.quiet()
    assert watched.recorded.since(mark, about("link", "ens224p")) == [], "the far end is not this host's NIC"


def test_a_network_create_and_delete_publish_one_network_event_each_carrying_the_commands_msg_id(
    watched, kernel: Kernel
):
    network_id = new_id()
    bridge = bridge_name(network_id)
    mark = watched.recorded.mark()

    create = watched.create(network_id)

    created = watched.recorded.wait_for(about("network", network_id, "created"), after=mark)
    assert (created.msg_id, created.reason, created.previous) == (create, None, None)
    assert created.data["health"] == "healthy" and created.data["problems"] == []
    assert created.data | {"name": bridge, "network_type": "flat", "physical_interface": "ens224"} == created.data
    assert watched.recorded.wait_for(about("link", bridge, "added"), after=mark).msg_id == create
    assert watched.recorded.wait_for(about("link", "ens224", "up"), after=mark).msg_id == create  # it was down
    watched.recorded.quiet()
    assert watched.recorded.since(mark, about("network")) == [created], "no passing state was published"
    mark = watched.recorded.mark()

    delete = str(uuid.uuid4())
    assert watched.call("NetworkHandler", "delete", {"network_id": network_id}, msg_id=delete).code == 0

    deleted = watched.recorded.wait_for(about("network", network_id, "deleted"), after=mark)
    assert (deleted.msg_id, deleted.previous) == (delete, "healthy")
    assert watched.recorded.wait_for(about("link", bridge, "removed"), after=mark).msg_id == delete
    watched.recorded.quiet()
    assert watched.recorded.since(mark, about("network")) == [deleted], "no degraded on the way out"


def test_a_network_created_on_an_uplink_without_carrier_is_created_degraded_then_healthy(watched, kernel: Kernel):
    kernel.ip("link", "set", "ens226p", "down")
    network_id = new_id()
    create = watched.create(network_id, nic="ens226")

    created = watched.recorded.wait_for(about("network", network_id, "created"))
    assert (created.msg_id, created.reason, created.data["health"]) == (create, "uplink_carrier_lost", "degraded")

    kernel.ip("link", "set", "ens226p", "up")
    healthy = watched.recorded.wait_for(about("network", network_id, "healthy"))
    assert (healthy.previous, healthy.msg_id) == ("degraded", None), "healthy for the first time, not restored"


def test_only_physical_interfaces_and_worker_made_devices_are_reported(watched, kernel: Kernel):
    mark = watched.recorded.mark()
    create = str(uuid.uuid4())
    veth = {"name": "kvtwa", "type": "veth", "peer": "kvtwb"}
    assert watched.call("DeviceHandler", "create", veth, msg_id=create).code == 0
    added = watched.recorded.wait_for(about("link", "kvtwa", "added"), after=mark)
    assert added.msg_id == create and added.data["owner"] == "worker" and added.data["type"] == "veth"
    assert watched.recorded.wait_for(about("link", "kvtwb", "added"), after=mark).msg_id == create

    kernel.ip("link", "add", "kvtfa", "type", "veth", "peer", "name", "kvtfb")  # a container's, say
    kernel.ip("link", "set", "kvtfa", "up")
    kernel.ip("link", "set", "kvtfb", "up")
    kernel.ip("link", "set", "ens225", "up")  # ens225 is a NIC here (its far end is not)
    assert watched.recorded.wait_for(about("link", "ens225", "up"), after=mark).msg_id is None
    kernel.ip("link", "set", "ens225p", "down")
    assert watched.recorded.wait_for(about("link", "ens225", "down"), after=mark).data["owner"] is None

    delete = str(uuid.uuid4())
    assert watched.call("DeviceHandler", "delete", {"name": "kvtwa"}, msg_id=delete).code == 0
    assert watched.recorded.wait_for(about("link", "kvtwa", "removed"), after=mark).msg_id == delete
    peer = watched.recorded.wait_for(about("link", "kvtwb", "removed"), after=mark)
    assert peer.msg_id == delete, "the peer went with it"
    watched.recorded.quiet()
    subjects = {e.subject for e in watched.recorded.since(mark, about("link"))}
    assert subjects == {"kvtwa", "kvtwb", "ens225"}, "no foreign veth, no far end, no loopback"


def test_the_network_picture_is_read_from_the_kernel(watched, kernel: Kernel):
    healthy_id, broken_id = new_id(), new_id()
    watched.create(healthy_id, nic="ens224")
    watched.create(broken_id, nic="ens225")
    watched.watch.stop()  # the picture must not come from what the watch heard
    kernel.ip("link", "del", bridge_name(broken_id))

    picture = watched.events.pictures.snapshot()["networks"]

    assert picture[healthy_id] == {"name": bridge_name(healthy_id), "health": "healthy", "reasons": [], "problems": []}
    assert picture[broken_id]["health"] == "degraded" and picture[broken_id]["reasons"] == ["bridge_gone"]


def test_lost_notifications_are_read_again_from_the_kernel_and_a_sync_follows(namespace, state_dir, carrier):
    plane = make_plane(namespace, state_dir, list(NICS))
    events = Events.create("kvt-host", None)
    recorded = Recorded(events.emitter)
    state = WorkerState(events.emitter, events.pictures, interval=3600)
    tiny = NetworkWatch(plane, events.emitter, open_monitor=lambda ns: LinkMonitor.open(ns, receive_buffer=2048))
    tiny.start()
    events.pictures.provide("networks", tiny.picture)
    state.start()
    try:
        call = caller(*handlers(plane))
        assert call("DeviceHandler", "create", {"name": "kvtoa", "type": "veth", "peer": "kvtob"}).code == 0
        recorded.wait_for(about("link", "kvtoa", "added"))
        recorded.quiet()
        held = threading.Event()
        recorded.hold = held  # the watch thread stops at its next event, as if the interpreter were busy
        ip("-n", namespace, "link", "set", "kvtoa", "down")
        flips = ["link set kvtoa up", "link set kvtoa down"] * 100 + ["link set kvtoa mtu 1400", "link set kvtoa up"]
        subprocess.run(["ip", "-n", namespace, "-batch", "-"], input="\n".join(flips), text=True, check=True)
        held.set()

        sync = recorded.wait_for(about("worker", state="sync"))
        assert sync.reason == SYNC_AFTER_OVERRUN
        recorded.quiet()
        last = recorded.since(0, about("link", "kvtoa"))[-1]
        assert last.state == "up" and last.data["mtu"] == 1400, "what the kernel has now, read afresh"
    finally:
        state.stop()
        tiny.stop()
        plane.close()


def test_a_restart_restores_the_networks_and_publishes_restored_without_a_msg_id(namespace, state_dir, carrier):
    network_id = new_id()
    first = make_plane(namespace, state_dir, list(NICS))
    assert caller(*handlers(first))("NetworkHandler", "create", flat(network_id)).code == 0
    first.close()
    ip("-n", namespace, "link", "del", bridge_name(network_id))  # a reboot forgets bridges
    plane = make_plane(namespace, state_dir, list(NICS))
    events = Events.create("kvt-host", None)
    recorded = Recorded(events.emitter)
    network, *_ = handlers(plane)
    try:
        assert start_network_watch(plane, events) is not None  # before on_start, as the worker wires it
        network.on_start()
        restored = recorded.wait_for(about("network", network_id, "restored"))
        assert (restored.previous, restored.msg_id, restored.data["resolved"]) == ("degraded", None, ["bridge_gone"])
        recorded.quiet()
        assert [e.state for e in recorded.since(0, about("network"))] == ["restored"]
    finally:
        plane.close()
