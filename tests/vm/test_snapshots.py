"""Snapshot commands on libvirt's test driver: the tree's order and the plans (the real guest is in
test_snapshots_libvirtd.py)."""

from __future__ import annotations

from tests.vm.test_commands import define


def test_the_list_puts_a_parent_before_its_children_even_within_one_second(call):
    name = define(call)
    for snapshot in ("z-root", "m-child", "a-grandchild"):  # names sorting against the tree
        assert call("snapshot_create", name=name, snapshot=snapshot).code == 0
    listed = call("snapshot_list", name=name).data
    assert [(s["snapshot"], s["parent"]) for s in listed["snapshots"]] == [
        ("z-root", None),
        ("m-child", "z-root"),
        ("a-grandchild", "m-child"),
    ]
    assert listed["count"] == 3 and [s["current"] for s in listed["snapshots"]] == [False, False, True]
    call("undefine", name=name)


def test_a_dry_run_of_an_existing_identical_snapshot_plans_nothing_and_of_a_new_one_says_what(call):
    name = define(call)
    assert call("snapshot_create", name=name, snapshot="s1").code == 0
    assert call("snapshot_create", name=name, snapshot="s1", dry_run=True).data["plan"] == []
    plan = call("snapshot_create", name=name, snapshot="s2", dry_run=True).data["plan"]
    assert plan == [f"internal snapshot s2 of {name}'s disks"]
    assert [s["snapshot"] for s in call("snapshot_list", name=name).data["snapshots"]] == ["s1"]
    call("undefine", name=name)


def test_snapshot_commands_on_an_unknown_vm_are_30007(call):
    assert call("snapshot_list", name="kvt-missing").code == 30007
    assert call("snapshot_create", name="kvt-missing", snapshot="s1").code == 30007
