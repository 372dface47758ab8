"""Unit states through systemd's D-Bus API (``org.freedesktop.systemd1``), with jeepney imported lazily.

One short connection per query: the inventory is asked rarely, and a long-lived one would need reconnecting
whenever dbus restarts.
"""

from __future__ import annotations

import threading
from typing import Any

SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
UNIT_FIELDS = {
    "ActiveState": "state",
    "SubState": "sub_state",
    "LoadState": "load_state",
    "UnitFileState": "enabled",
    "Description": "description",
}
TIMEOUT_S = 2.0


class SystemdUnits:
    def __init__(self, bus_address: str = SYSTEM_BUS, timeout: float = TIMEOUT_S):
        self._address = bus_address
        self._timeout = timeout

    def states(self, units: list[str]) -> dict[str, dict[str, Any]]:
        """Unit name → its state; a unit systemd cannot load is reported with the reason, not raised.

        jeepney's handshake has no timeout of its own: the query runs on a helper thread, so a bus that accepts
        but never answers fails this call (TimeoutError) instead of hanging the command.
        """
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def query() -> None:
            try:
                outcome["states"] = self._query(units)
            except BaseException as exc:
                outcome["error"] = exc
            done.set()

        threading.Thread(target=query, name="systemd-dbus", daemon=True).start()
        if not done.wait(self._timeout * (2 + len(units))):
            raise TimeoutError(f"no answer from the D-Bus system bus at {self._address}")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["states"]

    def _query(self, units: list[str]) -> dict[str, dict[str, Any]]:
        from jeepney.io.blocking import open_dbus_connection

        with self._connect(open_dbus_connection) as conn:
            return {unit: self._unit(conn, unit) for unit in units}

    def _connect(self, open_dbus_connection: Any) -> Any:
        try:
            return open_dbus_connection(self._address, auth_timeout=self._timeout)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to the D-Bus system bus at {self._address}: {exc}") from exc

    def _unit(self, conn: Any, unit: str) -> dict[str, Any]:
        from jeepney import DBusAddress, DBusErrorResponse, Properties, new_method_call

        manager = DBusAddress(MANAGER_PATH, bus_name=SYSTEMD, interface=f"{SYSTEMD}.Manager")
        try:
            (path,) = self._call(conn, new_method_call(manager, "LoadUnit", "s", (unit,)))
            unit_obj = DBusAddress(path, bus_name=SYSTEMD, interface=f"{SYSTEMD}.Unit")
            (props,) = self._call(conn, Properties(unit_obj).get_all())
            main_pid = self._main_pid(conn, path) if unit.endswith(".service") else None
        except DBusErrorResponse as exc:
            return {"state": "unknown", "reason": f"{exc.name}: {' '.join(map(str, exc.data))}"}
        values = {key: props[name][1] for name, key in UNIT_FIELDS.items() if name in props}
        return {**values, "main_pid": main_pid or None, "reason": None}

    def _main_pid(self, conn: Any, path: str) -> int | None:
        from jeepney import DBusAddress, Properties

        service = DBusAddress(path, bus_name=SYSTEMD, interface=f"{SYSTEMD}.Service")
        (value,) = self._call(conn, Properties(service).get("MainPID"))
        return value[1]

    def _call(self, conn: Any, message: Any) -> tuple[Any, ...]:
        from jeepney.wrappers import unwrap_msg

        return unwrap_msg(conn.send_and_get_reply(message, timeout=self._timeout))
