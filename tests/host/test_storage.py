import os
from pathlib import Path

import pytest

from kvmworker.inventory.pools import LibvirtPools
from kvmworker.inventory.storage import StorageInventory
from kvmworker.protocol.codes import Code
from kvmworker.virt.connection import LibvirtConnection
from tests.host.conftest import host_handler


def test_the_root_filesystem_is_present_with_the_size_statvfs_gives(call):
    reply = call(host_handler(), "storage")
    assert reply.code == Code.OK
    root = next(fs for fs in reply.data["filesystems"] if fs["mountpoint"] == "/")
    st = os.statvfs("/")
    assert root["total"] == st.f_blocks * st.f_frsize
    assert root["fstype"]


def test_every_disk_of_sys_block_is_listed_with_its_size():
    listed = {d["name"]: d for d in StorageInventory().read(with_pools=False)["block_devices"]}
    for name in os.listdir("/sys/block"):
        if name.startswith(("loop", "nbd")) and name not in listed:
            continue  # attached by a concurrent test after the inventory was read
        sectors = int(Path(f"/sys/block/{name}/size").read_text())
        if sectors:
            assert listed[name]["size"] == sectors * 512
    assert all(d["io"] is None or d["io"]["read_bytes"] >= 0 for d in listed.values())


def test_device_backed_mounts_are_listed_unescaped_and_fuse_or_pseudo_ones_are_not(tmp_path):
    (tmp_path / "self").mkdir()
    (tmp_path / "self/mounts").write_text(
        "/dev/x /mnt/with\\040space ext4 rw 0 0\n/dev/root / ext4 ro 0 0\n"
        "proc /proc proc rw 0 0\nuser@far:/ /mnt/far fuse.sshfs rw 0 0\n"
    )
    (tmp_path / "filesystems").write_text("nodev\tproc\nnodev\tfuse\n\text4\n")
    (tmp_path / "block").mkdir()
    found = StorageInventory(proc=tmp_path, sys=tmp_path).read(with_pools=False)["filesystems"]
    assert [(fs["mountpoint"], fs["read_only"]) for fs in found] == [("/mnt/with space", False), ("/", True)]
    assert found[0]["total"] is None  # no such directory here: usage unknown, not an error


def test_pools_come_from_libvirt(call):
    connection = LibvirtConnection("test:///default")
    try:
        reply = call(host_handler(storage=StorageInventory(pools=LibvirtPools(connection))), "storage")
    finally:
        connection.close()
    pools = reply.data["libvirt_pools"]
    assert pools["reachable"] is True
    default = next(p for p in pools["pools"] if p["name"] == "default-pool")
    assert default["state"] == "running" and default["capacity"] >= default["allocation"] >= 0


@pytest.mark.libvirtd
def test_pools_of_the_running_libvirtd_are_listed():
    import libvirt

    try:
        conn = libvirt.openReadOnly("qemu:///system")
    except libvirt.libvirtError as exc:
        pytest.skip(f"libvirtd is not reachable at qemu:///system: {exc}")
    expected = sorted(p.name() for p in conn.listAllStoragePools(0))
    conn.close()
    connection = LibvirtConnection("qemu:///system")
    try:
        pools = StorageInventory(pools=LibvirtPools(connection)).read()["libvirt_pools"]
    finally:
        connection.close()
    assert pools["reachable"] is True
    assert sorted(p["name"] for p in pools["pools"]) == expected


def test_an_unreachable_libvirt_is_reported_and_the_section_still_succeeds(call, tmp_path):
    connection = LibvirtConnection(f"qemu+unix:///system?socket={tmp_path}/no-libvirtd", open_timeout=2)
    reply = call(host_handler(storage=StorageInventory(pools=LibvirtPools(connection))), "storage")
    assert reply.code == Code.OK
    assert reply.data["libvirt_pools"]["reachable"] is False
    assert "no-libvirtd" in reply.data["libvirt_pools"]["reason"]
    assert reply.data["block_devices"]


def test_a_missing_sys_block_is_a_storage_info_failure(call, tmp_path):
    reply = call(host_handler(storage=StorageInventory(sys=tmp_path)), "storage")
    assert reply.code == Code.STORAGE_INFO_FAILED == 40201
    assert "block" in reply.data["detail"]
