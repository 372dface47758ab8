"""The ``services`` section: libvirtd, virtlogd, the worker itself and any named unit.

With systemd running (``/run/systemd/system`` exists, as ``sd_booted()`` tests) states come from its D-Bus API.
Without it (containers, this CI machine) each service is ``"unknown"`` with the reason, and whether a process of
that name runs, from the process table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmworker.inventory.section import failing_as
from kvmworker.inventory.systemd import SystemdUnits
from kvmworker.protocol.errors import ServiceInfoFailed

if TYPE_CHECKING:  # loaded by the first read of the process table, not at start
    import psutil

DEFAULT_SERVICES = ("libvirtd", "virtlogd", "kvmworker")
UNIT_TYPES = {"service", "socket", "target", "timer", "mount", "path", "slice", "scope", "device", "swap", "automount"}
NO_SYSTEMD = "systemd is not running on this host ({path} is absent): unit state cannot be read"
ProcessLister = Callable[[], Iterable["psutil.Process"]]


class ServiceInventory:
    def __init__(
        self,
        run: Path = Path("/run"),
        systemd: SystemdUnits | None = None,
        defaults: tuple[str, ...] = DEFAULT_SERVICES,
        processes: ProcessLister | None = None,
    ):
        self._booted_marker = Path(run) / "systemd" / "system"
        self._systemd = systemd or SystemdUnits()
        self._defaults = defaults
        self._processes = processes or _command_lines

    def read(self, names: list[str] | None = None) -> dict[str, Any]:
        units = unit_names([*self._defaults, *(names or [])])
        with failing_as(ServiceInfoFailed, "service states"):
            booted = self._booted_marker.is_dir()
            states = self._systemd_states(units) if booted else self._process_states(units)
            return {"systemd": booted, "services": [_service(unit, states[unit]) for unit in units]}

    def summary(self) -> dict[str, Any]:
        return self._headline(self.read())

    def _headline(self, full: dict[str, Any]) -> dict[str, str]:
        return {s["name"]: _short_state(s) for s in full["services"]}

    def _systemd_states(self, units: list[str]) -> dict[str, dict[str, Any]]:
        states = self._systemd.states(units)
        return {unit: {"source": "systemd", **states[unit]} for unit in units}

    def _process_states(self, units: list[str]) -> dict[str, dict[str, Any]]:
        """Without systemd: ``unknown``, the reason, and the pids of processes named like the service."""
        running = self._running_processes()
        reason = NO_SYSTEMD.format(path=self._booted_marker)
        states = {}
        for unit in units:
            pids = sorted(set(running.get(unit.removesuffix(".service"), [])))
            states[unit] = {
                "source": "process-table",
                "state": "unknown",
                "reason": reason,
                "process_running": bool(pids),
                "pids": pids,
            }
        return states

    def _running_processes(self) -> dict[str, list[int]]:
        """Program name → pids, under every name a service could be matched by."""
        import psutil

        running: dict[str, list[int]] = {}
        for proc in self._processes():
            try:
                names = _program_names(proc.info.get("cmdline") or [])
            except psutil.Error:
                continue  # it exited while we looked
            for name in names:
                running.setdefault(name, []).append(proc.pid)
        return running


def _command_lines() -> Iterable[psutil.Process]:
    import psutil

    # the command line alone: asking psutil for "name" too triples the cost (another file per process)
    return psutil.process_iter(["cmdline"])


def unit_names(names: list[str]) -> list[str]:
    """``libvirtd`` → ``libvirtd.service``; other unit types keep their suffix; order kept, duplicates dropped."""
    units = [n if "." in n and n.rsplit(".", 1)[1] in UNIT_TYPES else f"{n}.service" for n in names]
    return list(dict.fromkeys(units))


def _service(unit: str, state: dict[str, Any]) -> dict[str, Any]:
    return {"name": unit.removesuffix(".service"), "unit": unit, **state}


def _short_state(service: dict[str, Any]) -> str:
    if service["state"] != "unknown" or "process_running" not in service:
        return service["state"]
    return "unknown (process running)" if service["process_running"] else "unknown (no process)"


def _program_names(cmdline: list[str]) -> set[str]:
    """The program's file name, and for interpreters the script or ``-m`` module (kernel threads have none)."""
    args = [os.path.basename(a) for a in cmdline[:3]]
    names = set(args[:1])
    if len(args) > 1 and args[0].startswith("python"):
        names.add(args[2] if args[1] == "-m" and len(args) > 2 else args[1])
    return names
