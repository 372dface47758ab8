"""What domain XML may contain: every element, attribute and path kind the worker lets through to libvirt.

Anything not listed here is refused, so that a new libvirt feature (or an old one nobody thought of)
is closed until someone adds it on purpose. Each entry says which attributes an element may carry,
which children it may have, and which of its values are paths (and of which kind, see ``policy``).
Elements whose meaning changes with their ``type`` list one variant per allowed type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class Path(Enum):
    """A value that names a file on the host; ``policy`` decides where each kind may point."""

    IMAGE = "image"  # disk sources, kernel, initrd, dtb: inside a storage directory (or the pool)
    FIRMWARE = "firmware"  # loader, nvram template: read-only firmware directories or a storage directory
    NVRAM = "nvram"  # writable firmware variables: a storage directory or libvirt's nvram dir, per domain
    CONSOLE = "console"  # a file-backed serial/console: libvirt's qemu log dir, named after the domain
    EMULATOR = "emulator"  # the QEMU binary: only one that libvirt's own capabilities list


ANY = "any"
"""A value that is not a path and that libvirt validates itself (numbers, model names, addresses)."""

Value = str | frozenset[str] | Path


@dataclass(frozen=True)
class Rule:
    attrs: Mapping[str, Value] = field(default_factory=dict)
    children: Mapping[str, Rule] = field(default_factory=dict)
    text: Value | None = None  # None: whatever text there is, libvirt does not read it as a path
    by_type: Mapping[str, Rule] = field(default_factory=dict)  # allowed values of ``type``, each with its extras
    default_type: str | None = None  # the variant libvirt applies when ``type`` is absent
    hook: str | None = None  # a check that needs more than one value (``policy`` runs it)


def one_of(*values: str) -> frozenset[str]:
    return frozenset(values)


def free(*names: str) -> dict[str, Value]:
    return dict.fromkeys(names, ANY)


def leaf(*names: str, text: Value | None = None) -> Rule:
    return Rule(attrs=free(*names), text=text)


YES_NO = one_of("yes", "no")
ON_OFF = one_of("on", "off")

ADDRESS = leaf(
    "type", "domain", "bus", "slot", "function", "multifunction", "controller", "target", "unit", "port", "reg",
    "cssid", "ssid", "devno", "iobase", "irq",
)  # fmt: skip
ALIAS = leaf("name")
BOOT = leaf("order", "loadparm")
PLACEMENT = {"address": ADDRESS, "alias": ALIAS}

# -- the top of the domain ---------------------------------------------------------------------------------

OS = Rule(
    attrs={"firmware": one_of("efi", "bios")},
    children={
        "type": Rule(attrs=free("arch", "machine"), text=one_of("hvm")),
        "boot": Rule(attrs={"dev": one_of("hd", "cdrom", "network", "fd")}),
        "bootmenu": leaf("enable", "timeout"),
        "bios": leaf("useserial", "rebootTimeout"),
        "smbios": Rule(attrs={"mode": one_of("emulate", "host")}),
        "kernel": Rule(text=Path.IMAGE),
        "initrd": Rule(text=Path.IMAGE),
        "dtb": Rule(text=Path.IMAGE),
        "cmdline": Rule(text=ANY),
        "loader": Rule(
            attrs={"readonly": YES_NO, "secure": YES_NO, "type": one_of("rom", "pflash"), "stateless": YES_NO},
            text=Path.FIRMWARE,
        ),
        "nvram": Rule(attrs={"template": Path.FIRMWARE}, text=Path.NVRAM),
        "firmware": Rule(children={"feature": leaf("enabled", "name")}),
    },
)

_FLAG = leaf("state", "retries", "value", "driver", "version", "eoi", "mode", "size", "unknown")
FEATURES = Rule(
    children={
        **dict.fromkeys(
            ("acpi", "apic", "pae", "hap", "privnet", "viridian", "vmport", "pvspinlock", "smm", "ioapic", "pmu",
             "vmcoreinfo", "htm", "gic", "msrs", "async-teardown"),
            _FLAG,
        ),
        "kvm": Rule(
            children=dict.fromkeys(("hidden", "hint-dedicated", "poll-control", "pv-ipi", "dirty-ring"), _FLAG)
        ),
        "hyperv": Rule(
            attrs=free("mode"),
            children={
                **dict.fromkeys(
                    ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "reset", "vendor_id",
                     "frequencies", "reenlightenment", "tlbflush", "ipi", "evmcs", "avic", "emsr_bitmap", "xmm_input"),
                    _FLAG,
                ),
                "stimer": Rule(attrs=free("state"), children={"direct": _FLAG}),
            },
        ),
    }
)  # fmt: skip

CPU = Rule(
    attrs={
        "mode": one_of("host-model", "host-passthrough", "custom", "maximum"),
        "match": one_of("minimum", "exact", "strict"),
        "check": one_of("none", "partial", "full"),
        "migratable": ON_OFF,
    },
    children={
        "model": leaf("fallback", "vendor_id", text=ANY),
        "vendor": Rule(text=ANY),
        "topology": leaf("sockets", "dies", "clusters", "cores", "threads"),
        "feature": leaf("policy", "name"),
        "cache": leaf("mode", "level"),
        "numa": Rule(children={"cell": leaf("id", "cpus", "memory", "unit", "memAccess", "discard")}),
    },
)

CLOCK = Rule(
    attrs=free("offset", "adjustment", "basis", "timezone"),
    children={"timer": leaf("name", "tickpolicy", "present", "track", "frequency", "mode")},
)

_LIFECYCLE = Rule(
    text=one_of("destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart")
)

# -- devices -----------------------------------------------------------------------------------------------

DISK = Rule(
    attrs={"device": one_of("disk", "cdrom")},
    children={
        "driver": Rule(
            attrs={
                "name": one_of("qemu"),
                "type": one_of("raw", "qcow2"),
                **free("cache", "io", "discard", "detect_zeroes", "copy_on_read", "queues", "iothread"),
            }
        ),
        "target": Rule(
            attrs={"bus": one_of("virtio", "sata", "scsi", "ide", "usb"), **free("dev", "tray", "removable")}
        ),
        "readonly": Rule(),
        "shareable": Rule(),
        "serial": Rule(text=ANY),
        "wwn": Rule(text=ANY),
        "boot": BOOT,
        "blockio": leaf("logical_block_size", "physical_block_size"),
        **PLACEMENT,
    },
    by_type={
        "file": Rule(children={"source": Rule(attrs={"file": Path.IMAGE, "startupPolicy": ANY})}),
        "volume": Rule(children={"source": Rule(attrs=free("pool", "volume", "startupPolicy"))}, hook="volume-disk"),
    },
    default_type="file",
)

INTERFACE = Rule(
    children={
        "mac": leaf("address"),
        "model": Rule(attrs={"type": one_of("virtio", "e1000", "e1000e", "rtl8139")}),
        "driver": Rule(attrs={"name": one_of("vhost", "qemu"), **free("queues", "txmode", "rx_queue_size")}),
        "boot": BOOT,
        "mtu": leaf("size"),
        "link": leaf("state"),
        "rom": leaf("bar", "enabled"),
        "bandwidth": Rule(children=dict.fromkeys(("inbound", "outbound"), leaf("average", "peak", "burst", "floor"))),
        **PLACEMENT,
    },
    by_type={
        "bridge": Rule(children={"source": leaf("bridge")}),
        "network": Rule(children={"source": leaf("network", "portgroup")}),
    },
)

_CHAR_TARGET = Rule(attrs=free("type", "port"), children={"model": leaf("name")})
CHARDEV = Rule(
    children={"target": _CHAR_TARGET, **PLACEMENT},
    by_type={
        "pty": Rule(),
        "file": Rule(children={"source": Rule(attrs={"path": Path.CONSOLE, "append": ON_OFF})}),
    },
    default_type="pty",
)

CHANNEL = Rule(
    children={"target": leaf("type", "name", "state"), **PLACEMENT},
    by_type={
        "unix": Rule(children={"source": Rule(attrs={"mode": one_of("bind")})}),  # libvirt picks the socket path
        "spicevmc": Rule(),
    },
)

GRAPHICS = Rule(
    attrs=free(
        "port", "autoport", "listen", "passwd", "passwdValidTo", "connected", "keymap", "sharePolicy", "websocket",
        "tlsPort", "defaultMode",
    ),
    children={
        "listen": Rule(attrs={"type": one_of("address", "network", "none"), **free("address", "network")}),
        "image": leaf("compression"),
        "jpeg": leaf("compression"),
        "zlib": leaf("compression"),
        "playback": leaf("compression"),
        "streaming": leaf("mode"),
        "clipboard": leaf("copypaste"),
        "mouse": leaf("mode"),
        "filetransfer": leaf("enable"),
        "channel": leaf("name", "mode"),
    },
    by_type={"vnc": Rule(), "spice": Rule()},
)  # fmt: skip

VIDEO = Rule(
    children={
        "model": Rule(
            attrs={
                "type": one_of("vga", "cirrus", "virtio", "qxl", "bochs", "ramfb", "none"),
                **free("vram", "heads", "primary", "ram", "vgamem", "vram64"),
            }
        ),
        **PLACEMENT,
    }
)

DEVICES = Rule(
    children={
        "emulator": Rule(text=Path.EMULATOR),
        "disk": DISK,
        "interface": INTERFACE,
        "serial": CHARDEV,
        "console": CHARDEV,
        "channel": CHANNEL,
        "graphics": GRAPHICS,
        "video": VIDEO,
        "input": Rule(
            attrs={"type": one_of("tablet", "mouse", "keyboard"), "bus": one_of("usb", "ps2", "virtio")},
            children=PLACEMENT,
        ),
        "sound": Rule(attrs=free("model"), children={"codec": leaf("type"), "audio": leaf("id"), **PLACEMENT}),
        "audio": Rule(attrs={"id": ANY}, by_type={"none": Rule(), "spice": Rule()}),
        "controller": Rule(
            attrs=free("type", "index", "model", "ports", "vectors"),
            children={
                "model": leaf("name"),
                "target": leaf("chassisNr", "chassis", "port", "busNr", "index", "hotplug", "memReserve"),
                "driver": leaf("queues", "iothread", "cmd_per_lun", "max_sectors", "ioeventfd"),
                "master": leaf("startport"),
                **PLACEMENT,
            },
        ),
        "memballoon": Rule(
            attrs=free("model", "autodeflate", "freePageReporting"),
            children={"stats": leaf("period"), "driver": leaf("iommu", "ats", "packed"), **PLACEMENT},
        ),
        "rng": Rule(
            attrs=free("model"),
            children={
                "backend": Rule(
                    attrs={"model": one_of("random", "builtin")},
                    text=one_of("/dev/urandom", "/dev/random", "/dev/hwrng", ""),
                ),
                "rate": leaf("bytes", "period"),
                **PLACEMENT,
            },
        ),
        "watchdog": Rule(attrs=free("model", "action"), children=PLACEMENT),
        "panic": Rule(attrs=free("model"), children=PLACEMENT),
    }
)

DOMAIN = Rule(
    attrs={"type": one_of("kvm", "qemu", "test")},
    children={
        "name": Rule(text=ANY),
        "uuid": Rule(text=ANY),
        "title": Rule(text=ANY),
        "description": Rule(text=ANY),
        "metadata": Rule(hook="metadata"),
        "memory": leaf("unit", text=ANY),
        "currentMemory": leaf("unit", text=ANY),
        "vcpu": leaf("placement", "cpuset", "current", text=ANY),
        "iothreads": Rule(text=ANY),
        "os": OS,
        "features": FEATURES,
        "cpu": CPU,
        "clock": CLOCK,
        "on_poweroff": _LIFECYCLE,
        "on_reboot": _LIFECYCLE,
        "on_crash": _LIFECYCLE,
        "pm": Rule(children=dict.fromkeys(("suspend-to-mem", "suspend-to-disk"), leaf("enabled"))),
        "devices": DEVICES,
        # what libvirt applies anyway; type none/static and base labels would choose the confinement
        "seclabel": Rule(attrs={"type": one_of("dynamic"), "model": ANY, "relabel": one_of("yes")}),
    },
)
