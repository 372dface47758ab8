"""The worker's libvirt connection: lazy, fast to fail, reported by capabilities."""

from __future__ import annotations

import json
import time

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.settings import Settings
from tests.vm.conftest import caller

NOWHERE = "qemu+unix:///system?socket=/nonexistent/kvt-libvirt-sock"


def test_building_the_worker_connects_to_nothing_and_a_command_answers_30009_at_once(tmp_path):
    assembly = assemble(Settings(host="kvt", libvirt_uri=NOWHERE, state_dir=tmp_path))
    started = time.monotonic()
    reply = caller(assembly.pipeline)("list")
    assert reply.code == 30009 and "nonexistent" in reply.data["detail"]
    assert time.monotonic() - started < 5
    assembly.close()


def test_capabilities_report_the_libvirt_version_or_why_it_is_unavailable(tmp_path, test_driver):
    def features(pipeline):
        body = json.dumps({"handler": "SystemHandler", "command": "capabilities", "data": {}}).encode()
        return pipeline.handle(Delivery(body=body, content_type="application/json")).data["features"]

    libvirt_feature = features(test_driver)["libvirt"]
    assert libvirt_feature["available"] is True and libvirt_feature["hypervisor"].startswith("TEST")
    nowhere = assemble(Settings(host="kvt", libvirt_uri=NOWHERE, state_dir=tmp_path))
    unreachable = features(nowhere.pipeline)
    nowhere.close()
    assert unreachable["libvirt"]["available"] is False and "HypervisorUnavailable" in unreachable["libvirt"]["reason"]


def test_one_connection_serves_every_command(test_driver):
    call = caller(test_driver)
    (handler,) = [h for h in test_driver.registry.handlers if h.name == "VmHandler"]
    call("list")
    first = handler.connection.open()
    call("list")
    assert handler.connection.open() is first
