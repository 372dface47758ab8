"""The composition root: what ``assemble`` builds is reachable from the Assembly, and closed by it once."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.settings import Settings
from kvmworker.virt.connection import ensure_event_loop


def call(assembly, handler: str, command: str) -> dict:
    body = json.dumps({"handler": handler, "command": command, "data": {}}).encode()
    reply = assembly.pipeline.handle(Delivery(body=body, content_type="application/json"))
    assert reply.code == 0, reply
    return reply.data


def open_fds() -> int:
    gc.collect()  # objects of earlier tests waiting for collection would otherwise close their fds mid-count
    return len(os.listdir("/proc/self/fd"))


def test_closing_the_assembly_closes_the_netlink_sockets_libvirt_and_the_journal_the_handlers_shared(tmp_path: Path):
    ensure_event_loop()  # libvirt's event loop is the process's, once: it is not the assembly's to close
    before = open_fds()
    assembly = assemble(Settings(host="kvt-assembly", state_dir=tmp_path, libvirt_uri="test:///default"))
    call(assembly, "NetworkHandler", "list")  # opens the shared netlink socket
    call(assembly, "VmHandler", "list")  # opens the shared libvirt connection
    call(assembly, "HostHandler", "network")  # borrows both
    assert open_fds() > before
    assembly.close()
    assert open_fds() == before


def test_capabilities_report_the_feature_probes_the_root_hands_to_the_system_handler(tmp_path: Path):
    assembly = assemble(Settings(host="kvt-assembly", state_dir=tmp_path, libvirt_uri="test:///default"))
    try:
        features = call(assembly, "SystemHandler", "capabilities")["features"]
    finally:
        assembly.close()
    assert set(features) == {"kvm", "libvirt", "vlan"}
    assert features["libvirt"]["available"] is True and features["libvirt"]["hypervisor"].startswith("TEST")
