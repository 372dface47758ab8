"""Structured spec → domain XML, and the small edits the handler makes to XML it did not write."""

from __future__ import annotations

from collections.abc import Sequence
from xml.etree import ElementTree as ET

from kvmworker.api.domain import DomainSpec, InterfaceSpec
from kvmworker.lazyimport import when_imported
from kvmworker.netplane.naming import bridge_name
from kvmworker.virt.policy import METADATA_NS
from kvmworker.virt.storage import Disk

# Our metadata serializes with its own prefix wherever ElementTree writes it (a process-wide table), from the
# moment ElementTree loads: with the first command that reads or writes XML (kvmworker.lazyimport).
when_imported("xml.etree.ElementTree", lambda et: et.register_namespace("kvmworker", METADATA_NS))

_TARGET_PREFIX = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}


def domain_xml(spec: DomainSpec, disks: Sequence[Disk], domain_type: str, uuid: str) -> str:
    """The uuid is chosen here, not by libvirt, so that the volumes can be recorded as this domain's first."""
    root = ET.Element("domain", type=domain_type)
    ET.SubElement(root, "name").text = spec.name
    ET.SubElement(root, "uuid").text = uuid
    _metadata(root, [d.path for d in disks if d.create_gib is not None])
    ET.SubElement(root, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(root, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"), ("on_crash", "destroy")):
        ET.SubElement(root, event).text = action
    root.append(_devices(spec, disks))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def _devices(spec: DomainSpec, disks: Sequence[Disk]) -> ET.Element:
    devices = ET.Element("devices")
    used: dict[str, int] = {}
    for disk, disk_spec in zip(disks, spec.disks, strict=True):
        prefix = _TARGET_PREFIX[disk_spec.bus]
        devices.append(disk_element(disk, _target_name(prefix, used.get(prefix, 0)), disk_spec.bus))
        used[prefix] = used.get(prefix, 0) + 1
    for nic in spec.interfaces:
        devices.append(interface_element(nic))
    ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(devices, "console", type="pty")
    if spec.graphics:
        ET.SubElement(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
    return devices


def disk_element(disk: Disk, target: str, bus: str) -> ET.Element:
    el = ET.Element("disk", type="file", device="disk")
    ET.SubElement(el, "driver", name="qemu", type=disk.format)
    ET.SubElement(el, "source", file=disk.path)
    ET.SubElement(el, "target", dev=target, bus=bus)
    return el


def interface_element(nic: InterfaceSpec) -> ET.Element:
    el = ET.Element("interface", type="bridge")
    ET.SubElement(el, "source", bridge=bridge_of(nic))
    if nic.mac:
        ET.SubElement(el, "mac", address=nic.mac)
    ET.SubElement(el, "model", type=nic.model)
    return el


def bridge_of(nic: InterfaceSpec) -> str:
    """A network's NIC goes on the bridge NetworkHandler made for it: same name rule, one place."""
    return bridge_name(str(nic.network_id)) if nic.network_id else str(nic.bridge)


def interface_xml(nic: InterfaceSpec) -> str:
    return ET.tostring(interface_element(nic), encoding="unicode")


def _target_name(prefix: str, index: int) -> str:
    return prefix + "abcdefghijklmnopqrstuvwxyz"[index]


def _metadata(root: ET.Element, created: list[str]) -> None:
    if not created:
        return
    ours = ET.SubElement(ET.SubElement(root, "metadata"), f"{{{METADATA_NS}}}worker")
    for path in created:
        ET.SubElement(ours, f"{{{METADATA_NS}}}volume", path=path)
