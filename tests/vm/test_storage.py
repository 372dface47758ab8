"""Disk images and volumes: every way out of the allowed directories is refused with 30006."""

from __future__ import annotations

import os

from tests.vm.conftest import vm_name


def test_an_image_named_plainly_is_found_in_the_storage_directory(call, images):
    (images / "base.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 508)
    reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": "base.qcow2"}])
    assert reply.code == 0, reply.data
    assert f'file="{images / "base.qcow2"}"' in reply.data["xml"] and 'type="qcow2"' in reply.data["xml"]


def test_the_image_format_comes_from_the_file_not_the_caller(call, images):
    (images / "plain.img").write_bytes(b"\0" * 512)
    reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": str(images / "plain.img")}])
    assert 'type="raw"' in reply.data["xml"]


def test_traversal_absolute_paths_outside_and_nul_are_refused(call, images):
    for image in ("../etc/passwd", "/etc/passwd", "a\0b", f"{images}/../../etc/passwd", "sub/disk.img"):
        reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": image}])
        assert reply.code == 30006, image
        assert reply.data["field"] == "disks.0.image"


def test_a_symlink_out_of_the_storage_directory_is_refused(call, images):
    os.symlink("/etc/hostname", images / "escape.img")
    for image in ("escape.img", str(images / "escape.img")):
        reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": image}])
        assert reply.code == 30006 and "outside" in reply.data["detail"]


def test_a_symlink_that_stays_inside_is_followed(call, images):
    (images / "real.img").write_bytes(b"\0" * 512)
    os.symlink(images / "real.img", images / "alias.img")
    reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": "alias.img"}])
    assert reply.code == 0 and str(images / "real.img") in reply.data["xml"]


def test_a_missing_image_is_30006_naming_the_directories(call, images):
    reply = call("define", dry_run=True, name=vm_name(), disks=[{"image": "nothing.img"}])
    assert reply.code == 30006 and str(images) in reply.data["detail"]


def test_volume_and_pool_names_that_are_paths_are_refused(call):
    for disk in ({"volume": "../x", "size_gib": 1}, {"volume": "a/b"}, {"volume": "ok", "pool": "../p", "size_gib": 1}):
        assert call("define", dry_run=True, name=vm_name(), disks=[disk]).code == 30006, disk


def test_raw_xml_naming_a_disk_outside_the_storage_directories_is_refused(call):
    name = vm_name()
    xml = (
        f"<domain type='test'><name>{name}</name><memory>32768</memory><os><type>hvm</type></os>"
        "<devices><disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vda'/></disk></devices>"
        "</domain>"
    )
    reply = call("define", xml=xml)
    assert reply.code == 30006 and reply.data["field"] == "xml:/domain/devices/disk/source/@file"
    assert call("info", name=name).code == 30007


def test_a_new_volume_is_created_in_the_pool_and_removed_with_remove_storage(call):
    name = vm_name()
    plan = call("define", dry_run=True, name=name, disks=[{"size_gib": 2, "pool": "default-pool"}]).data["plan"]
    assert plan[0] == f"create 2 GiB qcow2 volume {name}-disk0.qcow2 in pool default-pool"
    reply = call("define", name=name, disks=[{"size_gib": 2, "pool": "default-pool"}])
    (path,) = reply.data["volumes"]
    assert call("undefine", name=name, remove_storage=True).data["removed_volumes"] == [path]


def test_undefine_without_remove_storage_keeps_the_volume(call):
    name, volume = vm_name(), f"{vm_name()}.qcow2"
    call("define", name=name, disks=[{"size_gib": 1, "pool": "default-pool", "volume": volume}])
    assert call("undefine", name=name).data["removed_volumes"] == []
    again = vm_name()
    reply = call("define", name=again, disks=[{"volume": volume, "pool": "default-pool"}])
    assert reply.code == 0, reply.data
    # an existing volume was not created by this VM, so remove_storage leaves it alone
    assert call("undefine", name=again, remove_storage=True).data["removed_volumes"] == []


def test_an_unknown_pool_is_30006(call):
    reply = call("define", dry_run=True, name=vm_name(), disks=[{"size_gib": 1, "pool": "kvt-no-pool"}])
    assert reply.code == 30006 and "kvt-no-pool" in reply.data["detail"]
