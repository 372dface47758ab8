"""The test guest with a disk and a shell: the same kernel, an initramfs that also loads virtio-blk and then
reads shell commands from its second serial port (a pty on the host), printing to the first (the log file).
It has a guest-agent channel (virtio-serial) but no agent: the channel is "disconnected" until a test has the
guest open its port, and then an agent that never answers.

A test changes the guest's disk by writing a command to that pty and reads the answer in the serial log.
Built once next to the plain guest (``CACHE_DIR/<kernel package>-disk``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import termios
import time
import tty
from pathlib import Path

from tests.vm.conftest import serial_log
from tests.vm.guest import (
    BOOT,
    CACHE_DIR,
    READY_LINE,
    CpioArchive,
    GuestImage,
    _with_dependencies,
    guest_image,
    kernel_package,
)

MODULES = ("virtio_pci.ko", "virtio_blk.ko", "virtio_console.ko")
INIT = (
    BOOT
    + f"""n=0
until [ -e /dev/vda ] || [ $n -ge 100 ]; do sleep 0.1; n=$((n+1)); done
echo {READY_LINE} > /dev/console
stty -echo </dev/ttyS1
# through a pipe: a shell whose input is no terminal does no line editing (no cursor queries to answer)
while true; do cat /dev/ttyS1 | sh >/dev/console 2>&1; done
"""
)


def disk_guest_image() -> GuestImage:
    kernel = guest_image().kernel
    recipe = hashlib.sha256((INIT + repr(MODULES)).encode()).hexdigest()[:8]
    target = CACHE_DIR / f"{kernel_package()}-disk-{recipe}"
    image = GuestImage(kernel, target / "initrd.img")
    if image.initrd.exists():
        return image
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        tree = Path(work) / "tree"
        packages = [kernel_package(), "busybox-static"]
        subprocess.run(["apt-get", "download", *packages], cwd=work, check=True, capture_output=True)
        for deb in Path(work).glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        staged = Path(work) / "out"
        staged.mkdir()
        (staged / "initrd.img").write_bytes(_initramfs(tree))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
    return image


def _initramfs(tree: Path) -> bytes:
    modules = _with_dependencies(MODULES, tree)
    archive = CpioArchive()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib/modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.file("bin/busybox", (tree / "bin/busybox").read_bytes(), 0o755)
    archive.file("init", INIT.encode(), 0o755)
    archive.file("etc/modules.order", "\n".join(p.name for p in modules).encode() + b"\n", 0o644)
    for path in modules:
        archive.file(f"lib/modules/{path.name}", path.read_bytes(), 0o644)
    return archive.finish()


def disk_guest_xml(name: str, image: GuestImage, disk: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{image.kernel}</kernel>
    <initrd>{image.initrd}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{serial_log(name)}'/><target port='0'/></serial>
    <serial type='pty'><target port='1'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>"""


def ask(pty: str, line: str, name: str, answer: str, attempts: int = 4) -> None:
    """One shell command (idempotent) to the guest through its second serial port; returns once ``answer`` is in
    its log.

    QEMU notices a pty peer only by polling (about once a second) and loses what a peer wrote before it noticed;
    after a snapshot or a revert its pty may read nothing until the peer hangs up and connects again. So: connect,
    wait for QEMU to notice, send, wait for the answer; without one, hang up and try again.
    """
    for _ in range(attempts):
        fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[3] &= ~termios.ECHO  # never echo the guest's own echo back to it
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            time.sleep(2.5)
            os.write(fd, line.encode() + b"\n")
            if _seen(name, answer, 8.0):
                return
        finally:
            os.close(fd)
    wait_for_line(name, answer, timeout=1.0)  # fails, saying what the log holds


def _seen(name: str, text: str, timeout: float) -> bool:
    try:
        wait_for_line(name, text, timeout)
    except AssertionError:
        return False
    return True


def wait_for_line(name: str, text: str, timeout: float = 60.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        path = serial_log(name)
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = serial_log(name).read_text(errors="replace")[-500:] if serial_log(name).exists() else ""
    raise AssertionError(f"{name} printed no {text!r} in {timeout} s; log ends: {tail!r}")
