"""§8 on the real libvirtd: the wait inside ``VmHandler.shutdown`` is cancellable. A guest that ignores ACPI is
being waited for; ``SystemHandler.cancel`` ends the wait, the VM is not forced off (it runs, as before) and the
shutdown answers 30013. Through a real worker on RabbitMQ, so the cancel really arrives while the wait runs."""

from __future__ import annotations

import os

import pytest

from kvmworker.client import Client
from kvmworker.protocol.codes import Code
from kvmworker.protocol.envelope import Envelope
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.processes import wait_for
from tests.vm.conftest import SYSTEM_URI, _libvirtd_answers, virsh, vm_name

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]
WAIT_S = 30


@pytest.fixture
def vm_worker(tmp_path):
    if not _libvirtd_answers():
        if os.environ.get("CI"):
            pytest.fail(f"libvirtd at {SYSTEM_URI} is not answering; .ci/run should have started it")
        pytest.skip(f"libvirtd at {SYSTEM_URI} is not answering (start it with .ci/services.sh)")
    amqp = require_broker("amqp", AMQP_URL)
    settings = Settings(
        host=unique("kvt-vmops-"),
        broker_url=amqp,
        libvirt_uri=SYSTEM_URI,
        storage_dirs=[tmp_path],
        state_dir=tmp_path / "state",
        workers=2,
    )
    running = start_worker(settings)
    assert running.worker.connected.wait(WAIT_S), "worker did not connect to the broker"
    client = Client(amqp)
    yield client, settings.host
    client.close()
    running.stop(WAIT_S)
    delete_host_queue(amqp, settings.host)


def test_cancelling_the_wait_of_a_shutdown_leaves_a_guest_that_ignores_acpi_running_and_answers_30013(vm_worker, vms):
    client, host = vm_worker
    name = vm_name()
    vms.append(name)

    def call(handler: str, command: str, **data):
        return client.call(host, handler, command, data, timeout=WAIT_S)

    # No OS: the BIOS finds nothing to boot and never answers the power button.
    assert call("VmHandler", "define", name=name, memory_mib=32).code == 0
    assert call("VmHandler", "start", name=name).code == 0
    envelope = Envelope(handler="VmHandler", command="shutdown", data={"name": name, "timeout": 600}, timeout=900)
    shutdown = client.submit(host, envelope, timeout=900)

    def waiting() -> bool:
        phase = call("SystemHandler", "result", msg_id=shutdown.msg_id).data.get("phase")
        return "waiting up to 600 s" in (phase or "")

    assert wait_for(waiting, WAIT_S, interval=0.2), call("SystemHandler", "result", msg_id=shutdown.msg_id)
    running = call("SystemHandler", "result", msg_id=shutdown.msg_id)
    assert running.code == Code.UNKNOWN_OUTCOME and running.data["state"] == "running"
    assert running.data["started_at"] is not None and running.data["cancellable"] is True
    [listed] = [op for op in call("SystemHandler", "operations").data["operations"] if op["msg_id"] == shutdown.msg_id]
    assert (listed["handler"], listed["command"], listed["state"]) == ("VmHandler", "shutdown", "running")

    cancel = call("SystemHandler", "cancel", msg_id=shutdown.msg_id)
    assert cancel.code == 0 and cancel.data["state"] == "cancelling"
    reply = shutdown.future.result(WAIT_S)
    assert reply.code == Code.CANCELLED and reply.msg == "操作已取消", reply
    assert reply.data["state"] == "running" and reply.data["name"] == name
    assert "not forced off" in reply.data["detail"]
    assert virsh("domstate", name).strip() == "running"
    assert call("VmHandler", "info", name=name).data["state"] == "running"
    assert call("SystemHandler", "result", msg_id=shutdown.msg_id).code == Code.CANCELLED
