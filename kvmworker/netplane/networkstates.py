"""The networks' health as the watch follows it, and the ``network.state`` events its changes make.

- ``created`` / ``deleted``: a command recorded or removed the network (``data``: the network and its health;
  a network created without carrier on its uplink says so in ``reason``).
- ``degraded`` with ``reason`` (``bridge_gone``, ``subinterface_gone``, ``enslavement_lost``,
  ``uplink_carrier_lost``, … see ``health.Problem``): it was healthy, or it was degraded for other reasons.
- ``restored``: healthy again after being degraded (put back by a command, by the worker at start, by someone
  else, or a cable plugged back in).
- ``healthy``: healthy for the first time, for a network created degraded (its uplink had no carrier yet).

A network is judged only when no command is working on it (``Changes``): a create or a delete passes through
states that are no drift. Judging happens on the watch's thread, after the link notifications are read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kvmworker.netplane.changes import Changes, Done
from kvmworker.netplane.health import Health, Lookup, health
from kvmworker.netplane.networks import network_data
from kvmworker.netplane.sink import EventSink
from kvmworker.netplane.store import Network, NetworkStore

log = logging.getLogger("kvmworker.netplane")

SOURCE, KIND = "network", "state"


class NetworkStates:
    """Owned by the watch's thread: not thread-safe."""

    def __init__(self, store: NetworkStore, changes: Changes, lookup: Lookup, emitter: EventSink):
        self._store = store
        self._changes = changes
        self._lookup = lookup
        self._emitter = emitter
        self._networks: dict[str, Network] = {}
        self._by_device: dict[str, set[str]] = {}
        self._health: dict[str, Health] = {}
        self._never_healthy: set[str] = set()
        self._dirty: set[str] = set()
        self._recorded: set[str] = set()
        """Networks a command has finished with: read again from the store (created? deleted?)."""
        self._caused_by: dict[str, str] = {}
        """The command whose end is the next judgement of a network: its events carry that msg_id."""

    def baseline(self) -> None:
        """The recorded networks and their health when watching starts; nothing published."""
        for network in self._store.all():
            self._know(network)
            self._health[network.network_id] = health(network, self._lookup)

    def devices_changed(self, names: Iterable[str]) -> None:
        for name in names:
            self._dirty |= self._by_device.get(name, set())

    def command_done(self, done: Done) -> None:
        self._recorded |= done.networks
        self._dirty |= done.networks
        for network_id in done.networks:
            if done.msg_id:
                self._caused_by[network_id] = done.msg_id
            else:
                self._caused_by.pop(network_id, None)

    def everything_changed(self) -> None:
        """Notifications were lost: judge every network again."""
        self._recorded |= set(self._networks) | {n.network_id for n in self._store.all()}
        self._dirty |= self._recorded

    @property
    def pending(self) -> bool:
        return bool(self._dirty)

    def judge(self) -> None:
        """Publish what changed for every network touched since the last call (those a command still works on
        wait for its end)."""
        dirty, self._dirty = self._dirty, set()
        for network_id in sorted(dirty):
            if self._changes.busy(network_id):
                continue  # its command's end brings it back
            try:
                self._judge(network_id, self._caused_by.pop(network_id, None))
            except Exception:  # one network's surprise must not silence the others
                log.exception("network %s: its state could not be judged", network_id)

    def _judge(self, network_id: str, msg_id: str | None) -> None:
        if network_id in self._recorded:
            self._recorded.discard(network_id)
            if self._reread(network_id, msg_id):
                return
        network = self._networks.get(network_id)
        if network is None:
            return
        before, now = self._health[network_id], health(network, self._lookup)
        self._health[network_id] = now
        if before.reasons == now.reasons:
            return
        if now.problems:
            self._publish(network, "degraded", now, msg_id, previous=before.state)
        elif network_id in self._never_healthy:
            self._never_healthy.discard(network_id)
            self._publish(network, "healthy", now, msg_id, previous=before.state, resolved=before)
        else:
            self._publish(network, "restored", now, msg_id, previous=before.state, resolved=before)

    def _reread(self, network_id: str, msg_id: str | None) -> bool:
        """Created or deleted by the command that just ended: published here (True), else judged as usual."""
        recorded = self._store.get(network_id)
        known = self._networks.get(network_id)
        if recorded is None and known is not None:
            self._forget(known)
            self._publish(known, "deleted", Health(), msg_id, previous=self._health.pop(network_id).state)
            return True
        if recorded is not None and known is None:
            self._know(recorded)
            now = self._health[network_id] = health(recorded, self._lookup)
            if now.problems:
                self._never_healthy.add(network_id)
            self._publish(recorded, "created", now, msg_id)
            return True
        return False

    def _publish(
        self,
        network: Network,
        state: str,
        now: Health,
        msg_id: str | None,
        previous: str | None = None,
        resolved: Health | None = None,
    ) -> None:
        data: dict[str, Any] = network_data(network) | (now.data() if state != "deleted" else {})
        if resolved is not None:
            data["resolved"] = list(resolved.reasons)
        reason = now.reason if state in ("degraded", "created") else None
        self._emitter.emit(
            SOURCE, KIND, network.network_id, state, previous=previous, reason=reason, msg_id=msg_id, data=data
        )

    def _know(self, network: Network) -> None:
        self._networks[network.network_id] = network
        for name in _devices(network):
            self._by_device.setdefault(name, set()).add(network.network_id)

    def _forget(self, network: Network) -> None:
        self._networks.pop(network.network_id, None)
        self._caused_by.pop(network.network_id, None)
        self._never_healthy.discard(network.network_id)
        for name in _devices(network):
            ids = self._by_device.get(name, set())
            ids.discard(network.network_id)
            if not ids:
                self._by_device.pop(name, None)


def _devices(network: Network) -> list[str]:
    return [name for name in (network.bridge, network.subinterface, network.physical_interface) if name]
