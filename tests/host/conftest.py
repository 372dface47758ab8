"""Host inventory fixtures: a HostHandler over the real machine (any section replaceable), a pipeline to call it
through the real validation and error path, and a network namespace with a veth pair the test owns."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

from kvmworker.dispatch.commands import HandlerRegistry
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.handlers.host import HostHandler
from kvmworker.inventory.cpu import CpuInventory
from kvmworker.inventory.hardware import HardwareInventory
from kvmworker.inventory.identity import HostIdentity
from kvmworker.inventory.memory import MemoryInventory
from kvmworker.inventory.network import NetworkInventory
from kvmworker.inventory.services import ServiceInventory
from kvmworker.inventory.storage import StorageInventory
from kvmworker.protocol.envelope import Reply


def unique(prefix: str = "kvt") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def host_handler(**sections: Any) -> HostHandler:
    """The real machine's inventory, with the named sections replaced."""
    defaults = {
        "cpu": CpuInventory,
        "memory": MemoryInventory,
        "storage": StorageInventory,
        "network": NetworkInventory,
        "hardware": HardwareInventory,
        "services": ServiceInventory,
        "identity": HostIdentity,
    }
    return HostHandler(**{name: sections.get(name) or make() for name, make in defaults.items()})


Call = Callable[..., Reply]


def while_interfaces_unchanged(read: Callable[[], Any], attempts: int = 5) -> tuple[set[str], Any]:
    """``read()`` with the worker namespace's interface names around it, retried until no concurrent test added or
    removed one meanwhile (other suites create devices in this namespace too)."""
    for _ in range(attempts):
        before = {name for _, name in socket.if_nameindex()}
        result = read()
        if {name for _, name in socket.if_nameindex()} == before:
            return before, result
    raise AssertionError("the interfaces of this namespace kept changing")


@pytest.fixture
def call() -> Call:
    """``call(handler, "cpu", {...})`` → the Reply, through the pipeline's validation and error mapping."""

    def send(handler: HostHandler, command: str, data: dict[str, Any] | None = None) -> Reply:
        pipeline = Pipeline(HandlerRegistry([handler]))
        body = json.dumps({"command": command, "handler": "HostHandler", "data": data or {}}).encode()
        return pipeline.handle(Delivery(body=body, content_type="application/json"))

    return send


@dataclass(frozen=True)
class VethPair:
    namespace: str
    name: str
    peer: str
    mac: str
    peer_mac: str


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")


def _create_namespace(name: str) -> None:
    """With iproute2, which waits as long as the kernel takes: pyroute2's netns.create forks a helper that must answer
    within 2 s, and creating a namespace waits for every namespace being destroyed by concurrent tests."""
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=120)


@pytest.fixture
def veth_namespace() -> Iterator[VethPair]:
    """A namespace of the test's own holding a veth pair with MACs the test chose."""
    _needs_root()
    pair = VethPair(unique("kvtns"), unique("kvt"), unique("kvt"), "02:00:00:aa:bb:01", "02:00:00:aa:bb:02")
    _create_namespace(pair.namespace)
    try:
        with IPRoute(netns=pair.namespace, flags=0) as ipr:
            ipr.link("add", ifname=pair.name, kind="veth", peer={"ifname": pair.peer, "address": pair.peer_mac})
            (index,) = ipr.link_lookup(ifname=pair.name)
            ipr.link("set", index=index, address=pair.mac, state="up")
        yield pair
    finally:
        netns.remove(pair.namespace)
