"""Network dataplane fixtures: a namespace of the test's own where veth ends play the physical NICs
(``ens224``…), the three network handlers pointed at it, raw JSON calls through the pipeline, and
an independent look at the kernel (``ip -n NS -j -d link``, never the code under test)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events import Events
from kvmworker.handlers.device import DeviceHandler
from kvmworker.handlers.namespace import NamespaceHandler
from kvmworker.handlers.network import NetworkHandler
from kvmworker.netplane.ownership import PhysicalInterfaces
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.pool import NetlinkPool, Opener
from kvmworker.netplane.store import FILENAME, NetworkStore
from kvmworker.netplane.watch import NetworkWatch, start_network_watch
from kvmworker.protocol.envelope import Reply
from tests.conftest import unique
from tests.netplane.events import Recorded

NICS = ("ens224", "ens225", "ens226")
DOCUMENTED_EXAMPLE = {
    "network_id": "5b0503ba-1af4-11ea-baa2-000c2902e179",
    "network_type": "vlan",
    "physical_interface": "ens224",
    "vlan_id": "1001",
}
Call = Callable[..., Reply]


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def require_vlan_kernel(namespace: str) -> None:
    """Skip unless this kernel makes VLAN links; inside the guest stage (KVT_REQUIRE_8021Q=1) fail instead."""
    probe = subprocess.run(
        ["ip", "-n", namespace, "link", "add", "link", "ens224", "name", "kvtprobe", "type", "vlan", "id", "7"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        reason = f"this kernel cannot make VLAN links ({probe.stderr.strip()}); CI runs this file in a guest"
        if os.environ.get("KVT_REQUIRE_8021Q"):
            pytest.fail(reason)
        pytest.skip(reason)
    ip("-n", namespace, "link", "del", "kvtprobe")


@dataclass(frozen=True)
class Kernel:
    """What the kernel has in the test's namespace, read with iproute2."""

    namespace: str

    def links(self) -> dict[str, dict[str, Any]]:
        return {link["ifname"]: link for link in json.loads(ip("-n", self.namespace, "-j", "-d", "link", "show"))}

    def link(self, name: str) -> dict[str, Any] | None:
        return self.links().get(name)

    def ip(self, *args: str) -> str:
        return ip("-n", self.namespace, *args)


def make_namespace(nics: tuple[str, ...] = NICS) -> str:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = unique("kvt-np-")
    ip("netns", "add", name)
    for nic in nics:
        ip("-n", name, "link", "add", nic, "type", "veth", "peer", "name", f"{nic}p")
    return name


@pytest.fixture
def namespace() -> Iterator[str]:
    name = make_namespace()
    yield name
    ip("netns", "del", name)


@pytest.fixture
def kernel(namespace: str) -> Kernel:
    return Kernel(namespace)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def make_plane(namespace: str | None, state_dir: Path, physical: list[str] | None = None, opener: Opener | None = None):
    pool = NetlinkPool(namespace) if opener is None else NetlinkPool(namespace, opener)
    return Netplane(pool, NetworkStore(state_dir / FILENAME), PhysicalInterfaces(physical))


@pytest.fixture
def plane(namespace: str, state_dir: Path) -> Iterator[Netplane]:
    plane = make_plane(namespace, state_dir, list(NICS))
    yield plane
    plane.close()


def caller(*handlers: object) -> Call:
    pipeline = Pipeline(HandlerRegistry(handlers))

    def call(handler: str, command: str, data: dict[str, Any] | None = None, **envelope: Any) -> Reply:
        body = json.dumps({"handler": handler, "command": command, "data": data or {}, **envelope}).encode()
        return pipeline.handle(Delivery(body=body, content_type="application/json"))

    return call


def handlers(plane: Netplane) -> tuple[NetworkHandler, NamespaceHandler, DeviceHandler]:
    return NetworkHandler(plane), NamespaceHandler(plane), DeviceHandler(plane)


@pytest.fixture
def call(plane: Netplane) -> Call:
    """``call("NetworkHandler", "create", {...}, dry_run=True)``: a raw JSON body through ``Pipeline.handle``."""
    return caller(*handlers(plane))


def flat(network_id: str, nic: str = "ens224", **extra: Any) -> dict[str, Any]:
    return {"network_id": network_id, "network_type": "flat", "physical_interface": nic, **extra}


@pytest.fixture
def carrier(namespace: str) -> None:
    """The far ends of the NICs up: the uplinks have carrier, as NICs plugged into a switch."""
    for nic in NICS:
        ip("-n", namespace, "link", "set", f"{nic}p", "up")


@dataclass
class Watched:
    """The network handlers and the network watch on the test's namespace, wired as the worker wires them
    (``start_network_watch``), with the worker's real ``Emitter``; ``recorded`` is every event it stored."""

    plane: Netplane
    events: Events
    recorded: Recorded
    watch: NetworkWatch
    call: Call

    def create(self, network_id: str, nic: str = "ens224", msg_id: str | None = None, **data: Any) -> str:
        """A network made by a command (flat unless ``data`` says otherwise); its msg_id."""
        msg_id = msg_id or str(uuid.uuid4())
        reply = self.call("NetworkHandler", "create", flat(network_id, nic) | data, msg_id=msg_id)
        assert reply.code == 0, reply.data
        return msg_id


@pytest.fixture
def watched(namespace: str, state_dir, carrier) -> Iterator[Watched]:
    plane = make_plane(namespace, state_dir, list(NICS))
    events = Events.create("kvt-host", None)
    recorded = Recorded(events.emitter)
    watch = start_network_watch(plane, events)
    assert watch is not None and watch.running
    yield Watched(plane, events, recorded, watch, caller(*handlers(plane)))
    plane.close()
    assert not watch.running
