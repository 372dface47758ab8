"""Builds the tiny test guest from Debian packages: a cloud kernel and a busybox initramfs.

Its init loads the ACPI button and evdev modules, runs busybox ``acpid`` (power button → ``poweroff -f``)
and then prints ``READY_LINE`` on the serial console, so a graceful ACPI shutdown really ends it.
Built once into ``CACHE_DIR`` and reused by later runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path("/var/tmp/kvmworker-test-guest")
KERNEL_META = "linux-image-cloud-amd64"
READY_LINE = "KVMWORKER-GUEST-READY"
# button before evdev: loading evdev then gives every existing input device, the power button included, its node.
MODULES = ("button.ko", "evdev.ko")

# What every test guest's init does first: busybox's tools, /proc, /sys, /dev, and its modules loaded in order.
BOOT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m; done
"""
INIT = (
    BOOT
    + f"""power_button() {{ grep -A5 'Phys=LNXPWRBN' /proc/bus/input/devices | grep -o 'event[0-9]*'; }}
n=0
until [ -n "$(power_button)" ] && [ -e /dev/input/$(power_button) ] || [ $n -ge 100 ]; do sleep 0.1; n=$((n+1)); done
# -f: busybox acpid as a daemon logs to /var/log/acpid.log, which does not exist here, and exits.
acpid -f -c /etc/acpi -l /dev/console &
# READY once acpid has the button open: a press before that (a shutdown right after READY, under TCG) is lost.
n=0
until ls -l /proc/$!/fd 2>/dev/null | grep -q /dev/input/event || [ $n -ge 100 ]; do sleep 0.1; n=$((n+1)); done
echo {READY_LINE} > /dev/console
while true; do sleep 3600; done
"""
)
POWER_BUTTON = "#!/bin/sh\necho KVMWORKER-GUEST-POWEROFF > /dev/console\npoweroff -f\n"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def guest_image() -> GuestImage:
    """The cached guest, building it first when this kernel version has none yet."""
    package = kernel_package()
    recipe = hashlib.sha256((INIT + POWER_BUTTON + repr(MODULES)).encode()).hexdigest()[:8]
    target = CACHE_DIR / f"{package}-{recipe}"  # a changed init is a new guest, not the cached old one
    image = GuestImage(target / "vmlinuz", target / "initrd.img")
    if image.kernel.exists() and image.initrd.exists():
        return image
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        staged = Path(work) / "out"
        _build(Path(work), staged)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)  # atomic: a half-built guest is never seen as cached
    return image


def kernel_package() -> str:
    """The versioned kernel package the cloud meta-package points at today."""
    out = subprocess.run(["apt-cache", "depends", KERNEL_META], check=True, capture_output=True, text=True).stdout
    found = re.search(r"Depends: (linux-image-\S+-cloud-amd64)", out)
    if not found:
        raise RuntimeError(f"{KERNEL_META} depends on no cloud kernel: {out!r}")
    return found.group(1)


def _build(work: Path, out: Path) -> None:
    debs = work / "debs"
    debs.mkdir()
    packages = [kernel_package(), "busybox-static"]
    subprocess.run(["apt-get", "download", *packages], cwd=debs, check=True, capture_output=True)
    tree = work / "tree"
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    out.mkdir()
    shutil.copyfile(next((tree / "boot").glob("vmlinuz-*")), out / "vmlinuz")
    (out / "initrd.img").write_bytes(_initramfs(tree))


def _initramfs(tree: Path) -> bytes:
    modules = _with_dependencies(MODULES, tree)
    archive = CpioArchive()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", (tree / "bin/busybox").read_bytes(), 0o755)
    archive.file("init", INIT.encode(), 0o755)
    archive.file("etc/acpi/PWRF/00000080", POWER_BUTTON.encode(), 0o755)
    archive.file("etc/modules.order", "\n".join(p.name for p in modules).encode() + b"\n", 0o644)
    for path in modules:
        archive.file(f"lib/modules/{path.name}", path.read_bytes(), 0o644)
    return archive.finish()


def _with_dependencies(names: tuple[str, ...], tree: Path) -> list[Path]:
    """The modules and what they depend on, dependencies first (the order insmod needs)."""
    by_name = {p.name.removesuffix(".ko").replace("-", "_"): p for p in tree.glob("lib/modules/*/kernel/**/*.ko")}
    ordered: list[Path] = []

    def add(name: str) -> None:
        path = by_name[name.removesuffix(".ko").replace("-", "_")]
        if path in ordered:
            return
        for dependency in _depends(path):
            add(dependency)
        ordered.append(path)

    for name in names:
        add(name)
    return ordered


def _depends(module: Path) -> list[str]:
    found = re.search(rb"\0depends=([^\0]*)\0", module.read_bytes())
    return [d for d in found.group(1).decode().split(",") if d] if found else []


class CpioArchive:
    """The ``newc`` format the kernel unpacks as initramfs; no external ``cpio`` needed."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._inode = 1

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", nlink=1)
        return b"".join(self._parts)

    def _entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0), nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._inode += 1
        header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
