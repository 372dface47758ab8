"""Plans on the real kernel: all steps or none."""

from __future__ import annotations

import pytest

from kvmworker.netplane.netlink import open_netlink
from kvmworker.netplane.plan import AddLink, DeleteLink, SetLink, describe, execute
from kvmworker.protocol.errors import DeviceNotFound

pytestmark = pytest.mark.netlink


@pytest.fixture
def nl(namespace):
    netlink = open_netlink(namespace)
    yield netlink
    netlink.close()


def test_a_failing_step_undoes_the_steps_before_it_newest_first(nl, kernel):
    steps = [
        AddLink("kvtbr0", "bridge", "kvmworker:device"),
        SetLink("ens224", master="kvtbr0", state="up", mtu=1400),
        SetLink("nosuch0", state="up"),
    ]
    with pytest.raises(DeviceNotFound):
        execute(steps, nl)
    links = kernel.links()
    assert "kvtbr0" not in links
    assert "master" not in links["ens224"] and links["ens224"]["mtu"] == 1500 and "UP" not in links["ens224"]["flags"]


def test_a_failing_commit_undoes_every_step(nl, kernel):
    def commit():
        raise RuntimeError("the store is full")

    with pytest.raises(RuntimeError):
        execute([AddLink("kvtbr0", "bridge", "kvmworker:device")], nl, commit=commit)
    assert "kvtbr0" not in kernel.links()


def test_a_deleted_device_is_made_again_when_a_later_step_fails(nl, kernel):
    made = AddLink("kvtbr0", "bridge", "kvmworker:device", mtu=1400)
    execute([made], nl)
    with pytest.raises(DeviceNotFound):
        execute([DeleteLink("kvtbr0", recreate=made), SetLink("nosuch0", state="up")], nl)
    again = kernel.link("kvtbr0")
    assert again["ifalias"] == "kvmworker:device" and again["mtu"] == 1400


def test_a_plan_describes_itself_without_touching_anything(nl, kernel):
    before = kernel.links()
    assert describe([SetLink("ens224", master=None), DeleteLink("kvtbr0")]) == [
        {"op": "link_set", "name": "ens224", "master": None},
        {"op": "link_del", "name": "kvtbr0"},
    ]
    assert kernel.links() == before
