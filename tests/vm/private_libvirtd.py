"""A private libvirtd for tests that kill it: a session daemon of the unprivileged user ``nobody``.

Never the machine's system libvirtd (other suites share it). Its own directories, socket and QEMU processes
live under one ``/tmp/kvt-libvirtd-*`` directory; ``remove()`` ends what it started (by pid) and deletes it.
QEMU there runs TCG as ``nobody``; its output goes to files (``stdio_handler``), so no virtlogd is spawned.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import libvirt

from kvmworker.virt.connection import ensure_event_loop

USER = "nobody"
GROUP = "nogroup"


def missing_tools() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    for tool in ("libvirtd", "setpriv", "virsh", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "starting a daemon as another user needs root"
    return None


class PrivateLibvirtd:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="kvt-libvirtd-", dir="/tmp"))
        self.root.chmod(0o755)  # nobody must reach its home and runtime directories
        self.home, self.run = self.root / "home", self.root / "run"
        config = self.home / ".config" / "libvirt"
        config.mkdir(parents=True)
        (config / "qemu.conf").write_text('stdio_handler = "file"\n')
        self.run.mkdir(mode=0o700)
        subprocess.run(["chown", "-R", f"{USER}:{GROUP}", str(self.home), str(self.run)], check=True)
        self.log = self.root / "libvirtd.log"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.run}/libvirt/libvirt-sock"

    def start(self, timeout: float = 30.0) -> None:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.run),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
        }
        user = ["setpriv", f"--reuid={USER}", f"--regid={GROUP}", "--clear-groups"]
        with self.log.open("ab") as out:  # setpriv execs libvirtd: the pid is the daemon's
            self.process = subprocess.Popen([*user, "libvirtd", "--timeout=0"], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"private libvirtd did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, its QEMU processes live on (as with a crashed libvirtd)."""
        assert self.process is not None and self.process.poll() is None, "the private libvirtd is not running"
        self.process.kill()
        self.process.wait(10)

    def virsh(self, *args: str) -> str:
        return subprocess.run(["virsh", "-c", self.uri, *args], check=True, capture_output=True, text=True).stdout

    def qemu_pid(self, name: str) -> int:
        return int((self.run / "libvirt" / "qemu" / "run" / f"{name}.pid").read_text())

    def remove(self) -> None:
        """Destroy and undefine its domains, stop it, end any QEMU it left, delete its directory."""
        if self.process is not None and self.process.poll() is None:
            self._remove_domains()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pidfile in (self.run / "libvirt" / "qemu" / "run").glob("*.pid"):
            if pidfile.name != "driver.pid":
                _kill_qemu(int(pidfile.read_text() or 0))
        shutil.rmtree(self.root, ignore_errors=True)

    def _answers(self) -> bool:
        ensure_event_loop()  # before this process's first connection, as libvirt asks
        try:
            libvirt.open(self.uri).close()
        except libvirt.libvirtError:
            return False
        return True

    def _remove_domains(self) -> None:
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains():
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        finally:
            conn.close()


def _kill_qemu(pid: int) -> None:
    """The QEMU of a domain of this daemon, if that pid still is one (pids are reused)."""
    try:
        mine = Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam(USER).pw_uid
        if not mine or b"qemu" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        return


def no_os_domain(name: str) -> str:
    """A domain that runs without a kernel (its BIOS finds nothing to boot): enough for lifecycle events."""
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices><memballoon model='none'/></devices></domain>"
    )
