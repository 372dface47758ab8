"""The worker's memory of its networks and namespaces: SQLite in the state directory.

The kernel forgets bridges at a reboot; this file does not, so the worker can put them back.
WAL with ``synchronous=NORMAL``: a commit costs no fsync, a crash never corrupts the file, and a
power cut can lose only the last moments, which ``NetworkHandler.create`` repeated then repairs.
"""

from __future__ import annotations

import time
from dataclasses import astuple, dataclass, fields

from kvmworker.statefiles import StateDatabase

FILENAME = "networks.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    network_id TEXT PRIMARY KEY,
    network_type TEXT NOT NULL,
    physical_interface TEXT NOT NULL,
    vlan_id INTEGER,
    mtu INTEGER,
    bridge TEXT NOT NULL UNIQUE,
    subinterface TEXT UNIQUE,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS networks_by_interface ON networks (physical_interface);
CREATE TABLE IF NOT EXISTS namespaces (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Network:
    network_id: str
    network_type: str
    physical_interface: str
    vlan_id: int | None
    mtu: int | None
    bridge: str
    subinterface: str | None

    @property
    def parameters(self) -> tuple[str, str, int | None, int | None]:
        """What a caller chooses; a repeated create must match these exactly."""
        return self.network_type, self.physical_interface, self.vlan_id, self.mtu


_COLUMNS = ", ".join(f.name for f in fields(Network))


class NetworkStore(StateDatabase):
    """Opened on first use, so that building the handlers touches no disk."""

    SCHEMA = _SCHEMA

    def get(self, network_id: str) -> Network | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM networks WHERE network_id = ?", (network_id,))
        return rows[0] if rows else None

    def all(self) -> list[Network]:
        return self._query(f"SELECT {_COLUMNS} FROM networks ORDER BY created_at, network_id")

    def on_interface(self, physical_interface: str) -> list[Network]:
        return self._query(f"SELECT {_COLUMNS} FROM networks WHERE physical_interface = ?", (physical_interface,))

    def with_bridge(self, bridge: str) -> Network | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM networks WHERE bridge = ?", (bridge,))
        return rows[0] if rows else None

    def add(self, network: Network) -> None:
        marks = ", ".join("?" * len(fields(Network)))
        self._write(
            f"INSERT INTO networks ({_COLUMNS}, created_at) VALUES ({marks}, ?)", (*astuple(network), time.time())
        )

    def remove(self, network_id: str) -> None:
        self._write("DELETE FROM networks WHERE network_id = ?", (network_id,))

    def add_namespace(self, name: str) -> None:
        self._write("INSERT OR IGNORE INTO namespaces (name, created_at) VALUES (?, ?)", (name, time.time()))

    def remove_namespace(self, name: str) -> None:
        self._write("DELETE FROM namespaces WHERE name = ?", (name,))

    def namespaces(self) -> set[str]:
        return {row[0] for row in self._rows("SELECT name FROM namespaces")}

    def _query(self, sql: str, args: tuple = ()) -> list[Network]:
        return [Network(*row) for row in self._rows(sql, args)]
