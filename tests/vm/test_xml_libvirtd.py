"""The XML allow-list and the volume records against the real libvirtd (qemu:///system), checked with virsh."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmworker.virt.policy import METADATA_NS
from tests.vm.conftest import SYSTEM_URI, _pipeline, caller, guest_xml, virsh, vm_name, wait_for_ready_line
from tests.vm.hostile_xml import CASES, legit_xml

pytestmark = [pytest.mark.libvirtd, pytest.mark.slow]


def test_hostile_documents_are_refused_before_the_real_daemon_sees_them(system_call, vms, images):
    for case in ("namespaced-attribute", "qemu-commandline", "serial-file-into-cron", "seclabel-none", "hostdev"):
        name = vm_name()
        vms.append(name)
        reply = system_call("define", xml=CASES[case].build(name, "qemu", images))
        assert reply.code == 30006 and reply.data["field"] == CASES[case].field, (case, reply.data)
        assert name not in virsh("list", "--all", "--name").split(), case


def test_a_legitimate_raw_document_defines_on_the_real_daemon_with_its_secret_intact(system_call, vms, images):
    name = vm_name()
    vms.append(name)
    reply = system_call("define", xml=legit_xml(name, "qemu", images, password="kvtR3al!"))
    assert reply.code == 0, reply.data
    dumped = virsh("dumpxml", "--inactive", "--security-info", name)
    assert f"file='{images / 'kvt-legit.qcow2'}'" in dumped
    assert "passwd='kvtR3al!'" in dumped  # masked in replies, never in what libvirt is given


@pytest.fixture
def readable_images(system) -> Iterator[Path]:
    """A storage directory qemu (as libvirt-qemu) can read: pytest's tmp_path is private to root."""
    path = Path(tempfile.mkdtemp(prefix="kvt-images-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_raw_guest_booted_from_a_kernel_in_the_storage_dir_runs(readable_images, vms, guest):
    """Direct kernel boot and a serial log: the paths the allow-list accepts are the ones a guest needs."""
    name = vm_name()
    vms.append(name)
    images = readable_images
    pipeline = _pipeline(images, SYSTEM_URI)
    system_call = caller(next(pipeline))
    kernel, initrd = shutil.copy(guest.kernel, images / "vmlinuz"), shutil.copy(guest.initrd, images / "initrd.img")
    xml = f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>
      <os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
        <cmdline>console=ttyS0 quiet</cmdline></os>
      <features><acpi/></features><on_poweroff>destroy</on_poweroff>
      <devices><serial type='file'><source path='/var/log/libvirt/qemu/{name}-serial.log'/></serial>
        <memballoon model='none'/></devices></domain>"""
    assert system_call("define", xml=xml).code == 0
    started = system_call("start", name=name)
    assert started.code == 0, started.data
    wait_for_ready_line(name)
    assert system_call("destroy", name=name).data["state"] == "shutoff"
    next(pipeline, None)


def test_a_structured_spec_still_defines_and_starts_on_the_real_daemon(system_call, vms):
    name = vm_name()
    vms.append(name)
    assert system_call("define", name=name, memory_mib=32, graphics=True).code == 0
    assert system_call("start", name=name).data["state"] == "running"
    assert virsh("domstate", name).strip() == "running"
    assert "<graphics type='vnc'" in virsh("dumpxml", name)


@pytest.fixture
def kvt_pool(tmp_path: Path) -> Iterator[libvirt.virStoragePool]:
    """A transient dir pool of the test's own: destroying it removes it from libvirt."""
    conn = libvirt.open(SYSTEM_URI)
    target = tmp_path / "pool"
    target.mkdir()
    name = f"kvt-pool-{uuid.uuid4().hex[:8]}"
    pool = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name}</name><target><path>{target}</path></target></pool>", 0
    )
    yield pool
    for vol in pool.listAllVolumes():
        vol.delete(0)
    pool.destroy()
    conn.close()


def test_undefine_with_forged_metadata_deletes_only_the_volume_the_worker_recorded(system_call, vms, kvt_pool):
    victim = kvt_pool.createXML(
        f"<volume><name>kvt-victim-{uuid.uuid4().hex[:6]}.img</name><capacity>1048576</capacity></volume>", 0
    )
    name = vm_name()
    vms.append(name)
    defined = system_call("define", name=name, memory_mib=32, disks=[{"size_gib": 0.01, "pool": kvt_pool.name()}])
    assert defined.code == 0, defined.data
    (own,) = defined.data["volumes"]

    forged = f"<metadata><kw:worker xmlns:kw='{METADATA_NS}'><kw:volume path='{victim.path()}'/></kw:worker></metadata>"
    through_worker = virsh("dumpxml", "--inactive", name).replace("<devices>", f"{forged}<devices>", 1)
    refused = system_call("define", xml=through_worker)
    assert refused.code == 30006 and METADATA_NS in refused.data["field"]

    # Someone with libvirt access forges it anyway, directly (as an older worker's domains may also carry it).
    dom = libvirt.open(SYSTEM_URI).lookupByName(name)
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        f"<worker><volume path='{victim.path()}'/></worker>",
        "kw",
        METADATA_NS,
        libvirt.VIR_DOMAIN_AFFECT_CONFIG,
    )
    removed = system_call("undefine", name=name, remove_storage=True)
    assert removed.code == 0 and removed.data["removed_volumes"] == [own]
    kvt_pool.refresh(0)
    assert Path(victim.path()).exists() and victim.name() in kvt_pool.listVolumes()
    assert not Path(own).exists()


def test_the_guest_xml_of_the_lifecycle_tests_passes_the_checker(system_call, guest):
    """tests/vm/test_libvirtd.py defines its guests from raw XML (and restarts libvirtd, so it runs apart)."""
    reply = system_call("define", dry_run=True, xml=guest_xml(vm_name(), guest))
    assert reply.code == 0, reply.data


def test_a_domains_own_dumped_xml_is_accepted_back_as_raw_xml(system_call, vms, images):
    """What libvirt writes (emulator, controllers, addresses, audio…) passes: redefining from dumpxml works."""
    name = vm_name()
    vms.append(name)
    (images / "base.img").write_bytes(b"\0" * 1024 * 1024)
    spec = {"disks": [{"image": "base.img"}], "interfaces": [{"bridge": "kvtbr-none"}], "graphics": True}
    assert system_call("define", name=name, memory_mib=32, **spec).code == 0
    dumped = virsh("dumpxml", "--inactive", name)
    assert "<emulator>" in dumped and "<address " in dumped
    again = system_call("define", xml=dumped.replace("<memory unit='KiB'>32768</memory>", "<memory>65536</memory>"))
    assert again.code == 0, again.data
    assert system_call("info", name=name).data["max_memory_mib"] == 64


def test_an_emulator_libvirt_does_not_list_is_refused_on_the_real_daemon(system_call, vms, images):
    name = vm_name()
    vms.append(name)
    assert system_call("define", name=name, memory_mib=32).code == 0
    dumped = virsh("dumpxml", "--inactive", name)
    start = dumped.index("<emulator>") + len("<emulator>")
    hostile = dumped[:start] + "/bin/sh" + dumped[dumped.index("</emulator>") :]
    reply = system_call("define", xml=hostile)
    assert reply.code == 30006 and reply.data["field"] == "xml:/domain/devices/emulator"
