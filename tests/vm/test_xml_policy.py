"""Raw domain XML through the real dispatch path: every bypass of the old check is refused, naming the element."""

from __future__ import annotations

import os
import stat
from xml.etree import ElementTree as ET

import libvirt
import pytest

from kvmworker.virt.policy import METADATA_NS
from tests.vm.conftest import caller, vm_name
from tests.vm.hostile_xml import CASES, domain, file_disk, legit_xml


@pytest.mark.parametrize("case", list(CASES))
def test_each_hostile_document_is_refused_with_30006_naming_the_element_and_nothing_is_defined(call, images, case):
    name = vm_name()
    reply = call("define", xml=CASES[case].build(name, "test", images))
    assert reply.code == 30006, reply.data
    assert reply.data.get("field") == CASES[case].field, reply.data
    assert call("info", name=name).code == 30007


@pytest.mark.parametrize("case", ["namespaced-attribute", "qemu-commandline", "block-disk", "forged-worker-metadata"])
def test_a_dry_run_refuses_the_same_documents(call, images, case):
    reply = call("define", dry_run=True, xml=CASES[case].build(vm_name(), "test", images))
    assert reply.code == 30006 and reply.data["field"] == CASES[case].field


def test_the_refusal_says_what_was_refused_and_where(call, images):
    detail = call("define", xml=CASES["hostdev"].build(vm_name(), "test", images)).data["detail"]
    assert "xml:/domain/devices/hostdev" in detail and "allow-list" in detail
    detail = call("define", xml=CASES["namespaced-attribute"].build(vm_name(), "test", images)).data["detail"]
    assert "foreign namespace" in detail


def test_a_legitimate_raw_document_with_many_devices_defines(call, images):
    name = vm_name()
    reply = call("define", xml=legit_xml(name, "test", images))
    assert reply.code == 0, reply.data
    disks = call("info", name=name).data["disks"]
    assert [d["source"] for d in disks] == [str(images / "kvt-legit.qcow2"), str(images / "kvt-legit.iso")]
    assert call("undefine", name=name).code == 0


def test_a_dry_run_of_raw_xml_masks_the_vnc_password(call, images):
    reply = call("define", dry_run=True, xml=legit_xml(vm_name(), "test", images, password="kvtS3crt"))
    assert reply.code == 0, reply.data
    assert "kvtS3crt" not in reply.data["xml"]
    assert ET.fromstring(reply.data["xml"]).find("devices/graphics").get("passwd") == "***"


def test_the_xml_the_structured_spec_generates_passes_the_same_checker_as_raw_xml(call, images):
    (images / "base.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 508)
    spec = {"disks": [{"image": "base.qcow2"}], "interfaces": [{"bridge": "br-kvt"}], "graphics": True}
    generated = call("define", dry_run=True, name=vm_name(), **spec).data["xml"]
    again = call("define", xml=generated)
    assert again.code == 0, again.data
    call("undefine", name=again.data["name"])


def test_the_structured_spec_cannot_reach_an_image_with_a_backing_file(call, images):
    CASES["qcow2-with-a-backing-file"].build("x", "test", images)
    reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": "kvt-backed.qcow2"}])
    assert reply.code == 30006 and "backing file" in reply.data["detail"]


def test_a_file_serial_console_is_allowed_only_in_libvirts_log_dir_named_after_the_domain(call, images):
    name = vm_name()
    own = domain(name, devices=f"<serial type='file'><source path='/var/log/libvirt/qemu/{name}-serial.log'/></serial>")
    assert call("define", dry_run=True, xml=own).code == 0
    escaping = own.replace(f"qemu/{name}-serial.log", f"qemu/../../../etc/{name}-x.log")
    assert call("define", dry_run=True, xml=escaping).code == 30006
    libvirts_own_log = own.replace(f"qemu/{name}-serial.log", f"qemu/{name}.log")
    assert call("define", dry_run=True, xml=libvirts_own_log).code == 30006


def test_file_disks_inside_the_storage_directory_are_allowed_outside_refused(call, images):
    assert call("define", dry_run=True, xml=domain(vm_name(), devices=file_disk(f"{images}/new.img"))).code == 0
    assert call("define", dry_run=True, xml=domain(vm_name(), devices=file_disk("/var/tmp/new.img"))).code == 30006


# -- which volumes undefine removes ---------------------------------------------------------------------


def _victim_volume(pool_name: str = "default-pool") -> libvirt.virStorageVol:
    """A volume the worker did not create, in the same pool as the worker's own (test driver, same process)."""
    conn = libvirt.open("test:///default")
    pool = conn.storagePoolLookupByName(pool_name)
    name = f"{vm_name()}-victim.img"
    return pool.createXML(f"<volume><name>{name}</name><capacity>1048576</capacity></volume>", 0)


def _volume_exists(path: str) -> bool:
    try:
        libvirt.open("test:///default").storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return False
    return True


def test_undefine_removes_only_the_volumes_the_workers_records_name_not_those_its_metadata_names(call):
    name = vm_name()
    reply = call("define", name=name, memory_mib=32, disks=[{"size_gib": 1, "pool": "default-pool"}])
    assert reply.code == 0, reply.data
    (own,) = reply.data["volumes"]
    victim = _victim_volume()
    # Someone with libvirt access rewrites the domain's metadata to name the victim (forging is refused via the worker).
    conn = libvirt.open("test:///default")
    dom = conn.lookupByName(name)
    forged = f"<worker><volume path='{victim.path()}'/></worker>"
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, forged, "kw", METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert victim.path() in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    assert call("undefine", name=name, remove_storage=True, dry_run=True).data["plan"][1:] == [f"delete volume {own}"]
    removed = call("undefine", name=name, remove_storage=True)
    assert removed.code == 0 and removed.data["removed_volumes"] == [own]
    assert _volume_exists(victim.path()) and not _volume_exists(own)
    victim.delete(0)


def test_a_domain_defined_outside_the_worker_with_forged_metadata_loses_no_volume_on_undefine(call):
    victim, name = _victim_volume(), vm_name()
    metadata = (
        f"<metadata><kw:worker xmlns:kw='{METADATA_NS}'><kw:volume path='{victim.path()}'/></kw:worker></metadata>"
    )
    libvirt.open("test:///default").defineXML(domain(name, top=metadata))
    reply = call("undefine", name=name, remove_storage=True)
    assert reply.code == 0 and reply.data["removed_volumes"] == []
    assert _volume_exists(victim.path())
    victim.delete(0)


def test_the_records_live_in_a_0600_file_in_the_state_dir_and_survive_a_worker_restart(images):
    from tests.vm.conftest import _pipeline

    name = vm_name()
    first = _pipeline(images, "test:///default")
    call = caller(next(first))
    (path,) = call("define", name=name, memory_mib=32, disks=[{"size_gib": 1, "pool": "default-pool"}]).data["volumes"]
    records = images / "state" / "vm-volumes.sqlite"
    assert stat.S_IMODE(os.stat(records).st_mode) == 0o600
    next(first, None)  # the worker stops: its handlers close

    second = _pipeline(images, "test:///default")
    again = caller(next(second))
    assert again("undefine", name=name, remove_storage=True).data["removed_volumes"] == [path]
    next(second, None)


def test_a_kept_volume_belongs_to_nobody_and_a_new_domain_with_the_old_uuid_does_not_inherit_it(call):
    name = vm_name()
    (path,) = call("define", name=name, memory_mib=32, disks=[{"size_gib": 1, "pool": "default-pool"}]).data["volumes"]
    uuid = call("info", name=name).data["uuid"]
    assert call("undefine", name=name).data["removed_volumes"] == []
    xml = domain(name).replace("</name>", f"</name><uuid>{uuid}</uuid>", 1)
    assert call("define", xml=xml).code == 0
    assert call("undefine", name=name, remove_storage=True).data["removed_volumes"] == []
    assert _volume_exists(path)
    libvirt.open("test:///default").storageVolLookupByPath(path).delete(0)


def test_attach_interface_xml_passes_the_same_checker(call):
    name = vm_name()
    assert call("define", name=name, memory_mib=32).code == 0
    reply = call("attach_interface", name=name, bridge="br-kvt", dry_run=True)
    assert reply.code == 0 and "br-kvt" in reply.data["xml"]
    call("undefine", name=name)
