"""The one checker every domain XML passes before libvirt sees it, whether a caller wrote it or the spec did.

It walks the tree against ``allowlist.DOMAIN``: an element, attribute or ``type`` not listed there is
refused (30006) with ``field`` naming it as ``xml:/domain/devices/disk[2]/source/@file``. Every value the
list marks as a path is checked for where it points (see ``PathRules``). Names in any namespace are
refused, except the worker's own element inside ``<metadata>`` in XML the worker generated itself.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from xml.etree import ElementTree as ET

from kvmworker.protocol.errors import InvalidParameter
from kvmworker.protocol.safe_xml import serialize, split
from kvmworker.virt.allowlist import ANY, DEVICES, DOMAIN, Path, Rule, Value
from kvmworker.virt.storage import QCOW2_MAGIC, StorageRules, check_plain_name

METADATA_NS = "https://kvmworker.invalid/xmlns/domain/1"
"""Our element inside ``<metadata>``: which volumes define created (for people reading the XML; undefine
trusts the worker's own records, never this)."""

FIRMWARE_DIRS = ("/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/qemu", "/usr/share/seabios", "/usr/share/edk2")
LIBVIRT_NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
LIBVIRT_LOG_DIR = "/var/log/libvirt/qemu"
QCOW2_BACKING_OFFSET = slice(8, 16)
QCOW2_INCOMPATIBLE = slice(72, 80)
QCOW2_EXTERNAL_DATA_FILE = 1 << 2
QCOW2_HEADER_V2 = 72
QCOW2_HEADER_READ = 64 * 1024
"""The header, its extensions and the backing file name all sit in the first cluster (at least 512 bytes)."""
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
QCOW2_MAX_BACKING_NAME = 1023
MAX_BACKING_DEPTH = 8

VolumeCheck = Callable[[str, str, str], None]
"""(pool, volume, field) → raises 30006 unless that volume exists inside that pool."""


def location(steps: Iterable[str]) -> str:
    return "xml:/" + "/".join(steps)


@dataclass
class PathRules:
    """Where each kind of path in domain XML may point. Paths are resolved (symlinks followed) first."""

    storage: StorageRules
    pool_dirs: list[str] = field(default_factory=list)  # the configured pool's directory, when it has one
    approved: frozenset[str] = frozenset()  # paths the structured spec resolved through the storage rules itself
    firmware_dirs: tuple[str, ...] = FIRMWARE_DIRS
    nvram_dir: str = LIBVIRT_NVRAM_DIR
    log_dir: str = LIBVIRT_LOG_DIR
    emulators: frozenset[str] = frozenset()  # the binaries libvirt's capabilities list

    def check(self, kind: Path, value: str, domain_name: str, where: str) -> None:
        if "\0" in value or not value.startswith("/"):
            raise InvalidParameter(f"{value!r} must be an absolute path", field=where)
        if kind is Path.EMULATOR:
            if value not in self.emulators:
                raise InvalidParameter(f"{value} is not an emulator libvirt lists for this host", field=where)
            return
        real = os.path.realpath(value)
        if kind is Path.IMAGE:
            # also for the spec's own images: the file's content decides this
            _backing_chain_inside(real, where, [*self.storage.dirs, *self.pool_dirs])
            if value not in self.approved:
                self._inside(real, [*self.storage.dirs, *self.pool_dirs], value, "the storage directories", where)
        elif value in self.approved:
            return
        elif kind is Path.FIRMWARE:
            self._inside(real, [*self.firmware_dirs, *self.storage.dirs], value, "the firmware directories", where)
        elif kind is Path.NVRAM:
            if not _under(real, self.storage.dirs):
                self._named_file(real, self.nvram_dir, f"{domain_name}_", value, where)
        elif kind is Path.CONSOLE:
            self._named_file(real, self.log_dir, f"{domain_name}-", value, where)

    @staticmethod
    def _inside(real: str, dirs: Iterable[str | FsPath], value: str, what: str, where: str) -> None:
        if not _under(real, dirs):
            raise InvalidParameter(f"{value} is outside {what} (after following links)", field=where)

    @staticmethod
    def _named_file(real: str, directory: str, prefix: str, value: str, where: str) -> None:
        """A file the guest writes: only directly in ``directory``, named after the domain, never a link."""
        parent, name = os.path.split(real)
        if parent != os.path.realpath(directory) or not name.startswith(prefix) or os.path.islink(value):
            raise InvalidParameter(f"{value} must be a file {directory}/{prefix}… (it is written to)", field=where)
        check_plain_name(name, where)
        if os.path.lexists(real) and not os.path.isfile(real):
            raise InvalidParameter(f"{value} exists and is not a regular file", field=where)


def _under(real: str, dirs: Iterable[str | FsPath]) -> bool:
    return any(FsPath(real).is_relative_to(os.path.realpath(d)) for d in dirs)


def _backing_chain_inside(real: str, where: str, allowed: list[FsPath | str], depth: int = 0) -> None:
    """A qcow2 image names other files itself (a backing file, an external data file): qemu would open them.

    An external data file is refused. A backing file is allowed only as a linked clone is made
    (``StorageHandler.volume_clone``): a plain path, resolving inside the storage or pool directories, whose format
    the image names (never probed), raw or qcow2, itself checked the same way, at most ``MAX_BACKING_DEPTH`` deep.
    """
    if not os.path.isfile(real):
        return  # not there (yet), or a FIFO/device that must not be read: nothing to say about its content
    with open(real, "rb") as image:
        header = image.read(QCOW2_HEADER_READ)
    if header[:4] != QCOW2_MAGIC:
        return
    version = int.from_bytes(header[4:8], "big")
    if version >= 3 and int.from_bytes(header[QCOW2_INCOMPATIBLE], "big") & QCOW2_EXTERNAL_DATA_FILE:
        raise InvalidParameter(f"{real} is a qcow2 image with an external data file; those are refused", field=where)
    offset, size = int.from_bytes(header[QCOW2_BACKING_OFFSET], "big"), int.from_bytes(header[16:20], "big")
    if not offset:
        return
    name, fmt = _backing_of(header, offset, size, version)
    backing = os.path.realpath(os.path.join(os.path.dirname(real), name)) if name else ""
    refusal = _backing_refusal(name, fmt, backing, allowed, depth)
    if refusal:
        raise InvalidParameter(f"{real} is a qcow2 image with a backing file {refusal}; those are refused", field=where)
    if fmt == "qcow2":
        _backing_chain_inside(backing, where, allowed, depth + 1)


def _backing_of(header: bytes, offset: int, size: int, version: int) -> tuple[str, str | None]:
    """The backing file's name and the format the header names for it (the backing-format extension), if any."""
    if size > QCOW2_MAX_BACKING_NAME or offset + size > len(header):
        return "", None
    name = header[offset : offset + size].decode("utf-8", "replace")
    at = int.from_bytes(header[100:104], "big") if version >= 3 else QCOW2_HEADER_V2
    while at + 8 <= min(offset, len(header)):
        kind, length = int.from_bytes(header[at : at + 4], "big"), int.from_bytes(header[at + 4 : at + 8], "big")
        if kind == 0:
            break
        if kind == QCOW2_EXT_BACKING_FORMAT:
            return name, header[at + 8 : at + 8 + length].decode("ascii", "replace")
        at += 8 + (length + 7) // 8 * 8
    return name, None


def _backing_refusal(name: str, fmt: str | None, backing: str, allowed: list[FsPath | str], depth: int) -> str:
    """Why this backing file may not be opened by qemu; empty when it may."""
    if not name or "\0" in name or (":" in name.split("/", 1)[0]):
        return "that is not a plain file name"  # json:{…}, nbd://… and the like reach beyond the host's files
    if fmt not in ("raw", "qcow2"):
        return f"{name} whose format the image does not name as raw or qcow2 (it would be probed)"
    if not _under(backing, allowed):
        return f"{name} outside the storage directories (after following links)"
    if depth + 1 >= MAX_BACKING_DEPTH:
        return f"chain deeper than {MAX_BACKING_DEPTH}"
    return ""


class DomainPolicy:
    """Checks one document. ``generated``: XML the structured spec made (may carry the worker's metadata)."""

    def __init__(self, paths: PathRules, volume_check: VolumeCheck | None = None, generated: bool = False):
        self._paths = paths
        self._volume_check = volume_check
        self._generated = generated
        self._name = ""
        self._hooks = {"metadata": self._metadata, "volume-disk": self._volume_disk}

    def check(self, root: ET.Element) -> None:
        if root.tag != "domain":
            raise InvalidParameter(f"the root element must be <domain>, not <{root.tag}>", field=location([root.tag]))
        self._name = root.findtext("name") or ""
        self._element(root, DOMAIN, ["domain"])

    def check_device(self, device: ET.Element, domain_name: str) -> None:
        """One device for a running or defined domain (attach): the rule it would have inside ``<devices>``."""
        rule = DEVICES.children.get(device.tag) if split(device.tag)[0] is None else None
        where = location(["devices", device.tag])
        if rule is None:
            raise InvalidParameter(_refusal(device.tag, "element", where), field=where)
        self._name = domain_name
        self._element(device, rule, ["devices", device.tag])

    def _element(self, el: ET.Element, rule: Rule, steps: list[str]) -> None:
        where = location(steps)
        rule = self._variant(el, rule, where)
        for name, value in el.attrib.items():
            self._attribute(name, value, rule, steps)
        if rule.text is not None and el.text is not None:
            self._value(rule.text, el.text, where, f"the text of {where}")
        if rule.hook:
            self._hooks[rule.hook](el, steps)
            if rule.hook == "metadata":
                return  # its children were judged by the hook
        seen: Counter[str] = Counter(child.tag for child in el)
        index: Counter[str] = Counter()
        for child in el:
            if not isinstance(child.tag, str):
                continue
            index[child.tag] += 1
            child_steps = [*steps, _step(child.tag, index[child.tag], seen[child.tag])]
            child_rule = rule.children.get(child.tag) if split(child.tag)[0] is None else None
            if child_rule is None:
                where = location(child_steps)
                raise InvalidParameter(_refusal(child.tag, "element", where), field=where)
            self._element(child, child_rule, child_steps)

    def _variant(self, el: ET.Element, rule: Rule, where: str) -> Rule:
        if not rule.by_type:
            return rule
        kind = el.get("type", rule.default_type)
        extra = rule.by_type.get(kind or "")
        if extra is None:
            allowed = ", ".join(sorted(rule.by_type))
            raise InvalidParameter(f"{where} of type {kind!r} is not allowed (allowed: {allowed})", field=where)
        return Rule(
            attrs={**rule.attrs, **extra.attrs, "type": ANY},
            children={**rule.children, **extra.children},
            text=rule.text,
            hook=extra.hook or rule.hook,
        )

    def _attribute(self, name: str, value: str, rule: Rule, steps: list[str]) -> None:
        where = location([*steps, f"@{name}"])
        allowed = rule.attrs.get(name) if split(name)[0] is None else None
        if allowed is None:
            raise InvalidParameter(_refusal(name, "attribute", where), field=where)
        self._value(allowed, value, where, where)

    def _value(self, allowed: Value, value: str, where: str, what: str) -> None:
        if isinstance(allowed, Path):
            self._paths.check(allowed, value, self._name, where)
        elif isinstance(allowed, frozenset) and value not in allowed:
            raise InvalidParameter(f"{what} may be one of {', '.join(sorted(allowed))}, not {value!r}", field=where)

    def _metadata(self, el: ET.Element, steps: list[str]) -> None:
        for child in el:
            where = location([*steps, child.tag])
            if split(child.tag)[0] != METADATA_NS:
                raise InvalidParameter(_refusal(child.tag, "element", where), field=where)
            if not self._generated:
                raise InvalidParameter(
                    f"{where}: the worker's own metadata is written only by the worker (send the XML without it)",
                    field=where,
                )

    def _volume_disk(self, el: ET.Element, steps: list[str]) -> None:
        source = el.find("source")
        where = location([*steps, "source"])
        if source is None or not source.get("pool") or not source.get("volume"):
            raise InvalidParameter("a volume disk names its 'pool' and 'volume'", field=where)
        if self._volume_check is None:
            raise InvalidParameter("volume disks need the libvirt connection to be checked", field=where)
        self._volume_check(source.get("pool", ""), source.get("volume", ""), where)


def _step(tag: str, index: int, count: int) -> str:
    return tag if count == 1 else f"{tag}[{index}]"


def _refusal(name: str, kind: str, where: str) -> str:
    uri, _ = split(name)
    if uri is not None:
        return f"{where}: {kind} in a foreign namespace ({uri}) is refused"
    return f"{where}: {kind} <{name}> is not on the allow-list" if kind == "element" else f"{where}: not allowed"


SECRET_ATTRIBUTES = frozenset({"passwd"})
"""Attributes whose value is a secret (VNC and SPICE passwords): masked wherever the XML is shown back."""
MASK = "***"


def masked(root: ET.Element) -> str:
    """The document with every secret masked, for dry-run replies and anything else a caller gets to read."""
    shown = copy.deepcopy(root)
    for el in shown.iter():
        for name in SECRET_ATTRIBUTES & set(el.attrib):
            el.set(name, MASK)
    return serialize(shown)
