"""A private D-Bus daemon with a stand-in for ``org.freedesktop.systemd1``.

systemd cannot run as PID 1 on the CI machine, so its D-Bus API is answered here: the real ``dbus-daemon`` and
the real wire protocol, with just the three calls the inventory makes (Manager.LoadUnit, Properties.GetAll on a
unit, Properties.Get of a service's MainPID), answered as systemd answers them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""
UNIT_PREFIX = "/org/freedesktop/systemd1/unit/"
T = TypeVar("T")


def dbus_daemon_available() -> bool:
    return shutil.which("dbus-daemon") is not None


class PrivateBus:
    def __init__(self, directory: Path):
        self.socket = directory / "bus"
        self.address = f"unix:path={self.socket}"
        config = directory / "bus.conf"
        config.write_text(CONFIG.format(socket=self.socket))
        self._proc = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={config}"], stdout=subprocess.DEVNULL)
        try:
            self._wait_listening()
        except BaseException:
            self.close()
            raise

    def _wait_listening(self, timeout: float = 10.0) -> None:
        """The socket file exists a moment before the daemon accepts on it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket))
                return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError(f"dbus-daemon did not start listening on {self.socket}") from None
                time.sleep(0.02)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


class FakeSystemd(threading.Thread):
    """``units``: unit name → its properties; a name in ``failing`` is answered with a D-Bus error."""

    def __init__(self, address: str, units: dict[str, dict[str, Any]], failing: frozenset[str] = frozenset()):
        super().__init__(daemon=True)
        self._units = units
        self._failing = failing
        self._conn = _within(10.0, lambda: open_dbus_connection(address))
        self._conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.systemd1"), timeout=10)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = self._conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            if msg.header.message_type == MessageType.method_call:
                self._conn.send(self._answer(msg))

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
        self._conn.close()

    def _answer(self, msg: Any) -> Any:
        member = msg.header.fields[HeaderFields.member]
        path = msg.header.fields[HeaderFields.path]
        if member == "LoadUnit":
            (unit,) = msg.body
            if unit in self._failing:
                return new_error(msg, "org.freedesktop.systemd1.NoSuchUnit", "s", (f"Unit {unit} not loaded.",))
            return new_method_return(msg, "o", (UNIT_PREFIX + _escape(unit),))
        unit = self._unit_at(path)
        if member == "GetAll":
            props = {k: ("s", v) for k, v in unit.items() if k != "MainPID"}
            return new_method_return(msg, "a{sv}", (props,))
        if member == "Get":
            return new_method_return(msg, "v", (("u", unit.get("MainPID", 0)),))
        return new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod", "s", (member,))

    def _unit_at(self, path: str) -> dict[str, Any]:
        for name, props in self._units.items():
            if UNIT_PREFIX + _escape(name) == path:
                return props
        return {"LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead", "Description": ""}


def _within(seconds: float, fn: Callable[[], T]) -> T:
    """jeepney's Hello has no timeout: a bus that never answers must fail the test, not hang the suite."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer from the private bus within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _escape(unit: str) -> str:
    """systemd's object path escaping: every byte outside [A-Za-z0-9] becomes _xx."""
    return "".join(c if c.isalnum() and c.isascii() else f"_{ord(c):02x}" for c in unit)
