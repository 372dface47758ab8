"""The worker's own record of the volumes it created, by domain: the only thing ``undefine`` deletes by.

Domain XML (its ``<metadata>`` included) comes from callers and cannot say what the worker made. A row is
written here before ``define`` creates a volume, so that a crash between the two leaves a record rather than
an orphan nobody may remove; it goes when the volume is deleted or the domain is undefined.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from kvmworker.statefiles import StateDatabase

FILENAME = "vm-volumes.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    domain_uuid TEXT NOT NULL,
    pool        TEXT NOT NULL,
    volume      TEXT NOT NULL,
    path        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (domain_uuid, path)
);
"""


@dataclass(frozen=True)
class OwnedVolume:
    domain_uuid: str
    pool: str
    volume: str
    path: str


class VolumeRecords(StateDatabase):
    """One SQLite table in the state directory (0600); ``None`` keeps it in memory (tests, tools)."""

    SCHEMA = _SCHEMA

    def add(self, owned: OwnedVolume) -> None:
        self._write(
            "INSERT OR REPLACE INTO volumes (domain_uuid, pool, volume, path, created_at) VALUES (?, ?, ?, ?, ?)",
            (owned.domain_uuid, owned.pool, owned.volume, owned.path, time.time()),
        )

    def of(self, domain_uuid: str) -> list[OwnedVolume]:
        rows = self._rows(
            "SELECT domain_uuid, pool, volume, path FROM volumes WHERE domain_uuid = ? ORDER BY created_at",
            (domain_uuid,),
        )
        return [OwnedVolume(*row) for row in rows]

    def forget(self, domain_uuid: str, path: str | None = None) -> None:
        if path is None:
            self._write("DELETE FROM volumes WHERE domain_uuid = ?", (domain_uuid,))
        else:
            self._write("DELETE FROM volumes WHERE domain_uuid = ? AND path = ?", (domain_uuid, path))
