"""NetworkHandler (the documented one): flat and VLAN networks as Linux bridges, remembered across restarts."""

from __future__ import annotations

import logging
from typing import Any

from kvmworker.api.network import NetworkApi, NetworkCreate, NetworkRef
from kvmworker.dispatch.commands import Plan
from kvmworker.dispatch.context import Context
from kvmworker.netplane import networks
from kvmworker.netplane.plan import Step, describe, execute
from kvmworker.netplane.plane import Netplane
from kvmworker.netplane.store import Network
from kvmworker.protocol.errors import DeviceNotFound, KvmError

log = logging.getLogger("kvmworker.network")


def _devices(network: Network) -> list[str | None]:
    """What a network command changes besides the network: link events about these carry its msg_id."""
    return [network.bridge, network.subinterface, network.physical_interface]


class NetworkHandler(NetworkApi):
    def __init__(self, plane: Netplane):
        self._plane = plane
        self._restored: dict[str, list[str]] = {}

    def create(self, data: NetworkCreate, ctx: Context) -> dict[str, Any]:
        network, known, steps = self._creation(data)
        store = self._plane.store
        with self._plane.changes.making(ctx.msg_id, networks=[network.network_id], devices=_devices(network)):
            execute(steps, self._plane.pool.get(), commit=None if known else lambda: store.add(network))
        return networks.network_data(network)

    def plan_create(self, data: NetworkCreate, ctx: Context) -> Plan:
        return Plan(describe(self._creation(data)[2]))

    def delete(self, data: NetworkRef, ctx: Context) -> dict[str, Any]:
        network, steps, foreign = self._removal(data)
        with self._plane.changes.making(ctx.msg_id, networks=[network.network_id], devices=_devices(network)):
            execute(steps, self._plane.pool.get(), commit=lambda: self._plane.store.remove(network.network_id))
        self._restored.pop(network.network_id, None)
        reply = {"name": network.bridge, "network_id": network.network_id, "left_alone": foreign}
        return reply | {"operations": describe(steps)}

    def plan_delete(self, data: NetworkRef, ctx: Context) -> Plan:
        _, steps, foreign = self._removal(data)
        return Plan(describe(steps), {"left_alone": foreign})

    def list(self, data: Any, ctx: Context) -> dict[str, Any]:
        known = self._plane.store.all()
        if not known:
            return {"networks": []}
        lookup = networks.bridge_view(self._plane.pool.get())
        return {"networks": [self._state(n, networks.drift(n, lookup, check_alias=False)) for n in known]}

    def show(self, data: NetworkRef, ctx: Context) -> dict[str, Any]:
        network = self._known(data.network_id)
        return self._state(network, networks.drift(network, self._plane.pool.get().link))

    def on_start(self) -> None:
        """Put back what the kernel lost (after a reboot: bridges, subinterfaces, enslavement, up state)."""
        known = self._plane.store.all()
        if not known:
            return
        try:
            lookup = networks.bridge_view(self._plane.pool.get())
        except KvmError as exc:
            log.error("cannot check %d remembered networks: %s", len(known), exc.detail)
            return
        for network in known:
            problems = networks.drift(network, lookup, check_alias=False)
            if problems:
                self._restore(network, problems)

    def _restore(self, network: Network, problems: list[str]) -> None:
        nl = self._plane.pool.get()
        try:
            steps = networks.plan_network(network, nl, self._plane.physical)
            with self._plane.changes.making(None, networks=[network.network_id]):
                execute(steps, nl)
        except KvmError as exc:
            log.error("network %s: %s; not restored: %s", network.network_id, "; ".join(problems), exc.detail)
            return
        except Exception:  # one network's surprise must not keep the others from being restored
            log.exception("network %s: %s; not restored", network.network_id, "; ".join(problems))
            return
        self._restored[network.network_id] = problems
        log.warning(
            "network %s restored (%s): %s",
            network.network_id,
            "; ".join(problems),
            ", ".join(f"{s['op']} {s['name']}" for s in describe(steps)),
        )

    def _creation(self, data: NetworkCreate) -> tuple[Network, Network | None, list[Step]]:
        """The network asked for, the one remembered under its id (if any) and the steps that make it so."""
        store = self._plane.store
        network = networks.new_network(
            data.network_id, data.network_type, data.physical_interface, data.vlan_id, data.mtu
        )
        known = store.get(network.network_id)
        if known is not None:
            networks.check_same_parameters(known, network)
        else:
            networks.check_conflicts(store, network)
        return network, known, networks.plan_network(network, self._plane.pool.get(), self._plane.physical)

    def _removal(self, data: NetworkRef) -> tuple[Network, list[Step], list[str]]:
        network = self._known(data.network_id)
        steps, foreign = networks.plan_removal(network, self._plane.pool.get())
        return network, steps, foreign

    def _known(self, network_id: str) -> Network:
        network = self._plane.store.get(network_id)
        if network is None:
            raise DeviceNotFound(f"network {network_id} does not exist", field="network_id")
        return network

    def _state(self, network: Network, problems: list[str]) -> dict[str, Any]:
        state = networks.network_data(network) | {"state": "drift" if problems else "ok", "drift": problems}
        if network.network_id in self._restored:
            state["restored_at_start"] = self._restored[network.network_id]
        return state
