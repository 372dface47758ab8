"""Memory across restarts: networks lost by the kernel come back when a new worker starts."""

from __future__ import annotations

import logging
import uuid

import pytest

from kvmworker.handlers.naming import bridge_name, network_alias
from kvmworker.handlers.network import NetworkHandler
from tests.netplane.conftest import NICS, caller, flat, make_plane

pytestmark = pytest.mark.netlink


def test_a_new_worker_restores_bridges_enslavement_and_up_state_and_logs_what_it_repaired(
    call, kernel, namespace, state_dir, caplog
):
    ids = [str(uuid.uuid4()) for _ in NICS]
    for network_id, nic in zip(ids, NICS, strict=True):
        assert call("NetworkHandler", "create", flat(network_id, nic, mtu=1400)).code == 0
    deleted, released, downed = ids
    kernel.ip("link", "del", bridge_name(deleted))
    kernel.ip("link", "set", "ens225", "nomaster")
    kernel.ip("link", "set", bridge_name(downed), "down")

    after_restart = make_plane(namespace, state_dir, list(NICS))  # the worker owns the plane and closes it
    restarted = NetworkHandler(after_restart)
    with caplog.at_level(logging.WARNING, logger="kvmworker.network"):
        restarted.on_start()

    links = kernel.links()
    for network_id, nic in zip(ids, NICS, strict=True):
        bridge = links[bridge_name(network_id)]
        assert bridge["ifalias"] == network_alias(network_id) and "UP" in bridge["flags"] and bridge["mtu"] == 1400
        assert links[nic]["master"] == bridge_name(network_id)
    assert caplog.text.count("restored") == 3
    assert f"bridge {bridge_name(deleted)} is missing" in caplog.text
    states = {n["network_id"]: n for n in caller(restarted)("NetworkHandler", "list").data["networks"]}
    assert all(state["state"] == "ok" for state in states.values())
    repaired = states[released]["restored_at_start"]
    assert repaired == [f"physical interface ens225 is not enslaved to {bridge_name(released)}"]
    after_restart.close()


def test_a_network_that_cannot_be_restored_is_logged_and_the_others_still_are(
    call, kernel, namespace, state_dir, caplog
):
    lost, fine = str(uuid.uuid4()), str(uuid.uuid4())
    call("NetworkHandler", "create", flat(lost, "ens224"))
    call("NetworkHandler", "create", flat(fine, "ens225"))
    kernel.ip("link", "del", bridge_name(lost))
    kernel.ip("link", "del", bridge_name(fine))
    kernel.ip("link", "del", "ens224")  # the NIC itself is gone now

    after_restart = make_plane(namespace, state_dir, list(NICS))  # the worker owns the plane and closes it
    restarted = NetworkHandler(after_restart)
    with caplog.at_level(logging.WARNING, logger="kvmworker.network"):
        restarted.on_start()
    assert f"network {lost}" in caplog.text and "not restored" in caplog.text
    assert kernel.link("ens225")["master"] == bridge_name(fine)
    shown = caller(restarted)("NetworkHandler", "show", {"network_id": lost}).data
    assert shown["state"] == "drift" and "physical interface ens224 is missing" in shown["drift"]
    after_restart.close()
