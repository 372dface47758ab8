"""Fixtures of the VmHandler suites: a handler on libvirt's test driver, one on the real libvirtd, guests."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.events import Events
from kvmworker.protocol.envelope import Reply
from kvmworker.settings import Settings
from kvmworker.virt.connection import ensure_event_loop
from tests.vm.guest import CACHE_DIR, READY_LINE, GuestImage, guest_image

SYSTEM_URI = os.environ.get("KVMWORKER_TEST_LIBVIRT", "qemu:///system")
SERIAL_LOG_DIR = Path("/var/log/libvirt/qemu")
GUEST_MIB = 96  # the test guest prints nothing on its console with 64

Call = Callable[..., Reply]


def vm_name() -> str:
    return f"kvt-{uuid.uuid4().hex[:8]}"


def caller(pipeline: Pipeline) -> Call:
    """``call("start", name=...)`` → the Reply, through the real validation and error path.

    ``envelope_timeout`` is how long the caller says it waits for the reply (the envelope's ``timeout``);
    ``msg_id`` the envelope's (else the worker makes one up).
    """

    def call(
        command: str,
        dry_run: bool = False,
        envelope_timeout: float | None = None,
        msg_id: str | None = None,
        **data: Any,
    ) -> Reply:
        body = {"handler": "VmHandler", "command": command, "data": data, "dry_run": dry_run}
        if envelope_timeout is not None:
            body["timeout"] = envelope_timeout
        if msg_id is not None:
            body["msg_id"] = msg_id
        return pipeline.handle(Delivery(body=json.dumps(body).encode(), content_type="application/json"))

    return call


def _pipeline(
    tmp_path: Path, uri: str, more_storage: tuple[Path, ...] = (), events: Events | None = None
) -> Iterator[Pipeline]:
    storage = [tmp_path, *more_storage]
    settings = Settings(host="kvt-host", libvirt_uri=uri, storage_dirs=storage, state_dir=tmp_path / "state")
    assembly = assemble(settings)
    if events is not None:  # as the worker's attach_events gives them
        assembly.vm.use_events(events)
    yield assembly.pipeline
    assembly.close()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """The one storage directory the handler under test may take images from."""
    path = tmp_path / "images"
    path.mkdir()
    return path


@pytest.fixture
def test_driver(images: Path) -> Iterator[Pipeline]:
    yield from _pipeline(images, "test:///default")


@pytest.fixture
def call(test_driver: Pipeline) -> Call:
    return caller(test_driver)


def _libvirtd_answers() -> bool:
    ensure_event_loop()  # before any connection of this process, as libvirt asks
    try:
        libvirt.open(SYSTEM_URI).close()
    except libvirt.libvirtError:
        return False
    return True


def require_libvirtd() -> None:
    if not _libvirtd_answers():
        if os.environ.get("CI"):
            pytest.fail(f"libvirtd at {SYSTEM_URI} is not answering; .ci/run should have started it")
        pytest.skip(f"libvirtd at {SYSTEM_URI} is not answering (start it with .ci/services.sh)")


@pytest.fixture
def system(images: Path) -> Iterator[Pipeline]:
    require_libvirtd()
    # The test guest's kernel boots from its cache: that directory is a storage directory of this worker too.
    yield from _pipeline(images, SYSTEM_URI, more_storage=(CACHE_DIR,))


def pipeline_with_events(images: Path, uri: str, events: Events) -> Iterator[Pipeline]:
    """A worker's handlers publishing VM events to ``events`` (as ``kvmworker worker`` wires them)."""
    yield from _pipeline(images, uri, more_storage=(CACHE_DIR,), events=events)


@pytest.fixture
def system_call(system: Pipeline) -> Call:
    return caller(system)


@pytest.fixture
def vms() -> Iterator[list[str]]:
    """Names of VMs a test creates on the real libvirtd: destroyed and undefined afterwards, whatever happened."""
    names: list[str] = []
    yield names
    conn = libvirt.open(SYSTEM_URI)
    try:
        for name in names:
            remove_vm(conn, name)
    finally:
        conn.close()


def remove_vm(conn: libvirt.virConnect, name: str) -> None:
    """A test's VM gone, whatever state it is in: destroyed, undefined with its snapshots, its serial logs removed."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None and dom.isActive():
        dom.destroy()
    if dom is not None and dom.isPersistent():
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    serial_log(name).unlink(missing_ok=True)
    (SERIAL_LOG_DIR / f"{name}.log").unlink(missing_ok=True)  # libvirt's own log of that domain


@pytest.fixture(scope="session")
def guest() -> GuestImage:
    return guest_image()


def guest_xml(name: str, image: GuestImage, serial: Path | None = None, devices: str = "") -> str:
    """TCG, not KVM: stock kernels hit an emulation failure on this machine kind's nested KVM. ``serial``: a log
    of its own, appended to (a migrated guest's console goes on in the same file), instead of ``serial_log``."""
    console = f"<source path='{serial}' append='on'/>" if serial else f"<source path='{serial_log(name)}'/>"
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{GUEST_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{image.kernel}</kernel>
    <initrd>{image.initrd}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <serial type='file'>{console}</serial>
    {devices}
    <memballoon model='none'/>
  </devices>
</domain>"""


def serial_log(name: str) -> Path:
    return SERIAL_LOG_DIR / f"{name}-serial.log"


def wait_for_ready_line(name: str, timeout: float = 60.0) -> float:
    """The power button is only handled once the guest says so; an earlier ACPI shutdown is lost."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        path = serial_log(name)
        if path.exists() and READY_LINE in path.read_text(errors="replace"):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{name} printed no ready line in {timeout} s")


def virsh(*args: str) -> str:
    """An independent look at libvirt's view, for checking the handler's answers."""
    return subprocess.run(["virsh", "-c", SYSTEM_URI, *args], check=True, capture_output=True, text=True).stdout
