"""StorageHandler on the real libvirtd and real qemu-img, in a directory pool of the test's own (kvt-…).

Each test gets a fresh pool under /var/lib/libvirt/images (where QEMU may read), removed afterwards with its files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmworker.api.storage import VolumeClone
from kvmworker.app import assemble
from kvmworker.dispatch.delivery import Delivery
from kvmworker.dispatch.pipeline import Pipeline
from kvmworker.protocol.envelope import Reply
from kvmworker.protocol.errors import Cancelled
from kvmworker.settings import Settings
from kvmworker.virt.copy import partial_path
from tests.vm.conftest import SYSTEM_URI, _libvirtd_answers, guest_xml, vm_name, wait_for_ready_line
from tests.vm.guest import CACHE_DIR

POOLS_HOME = Path("/var/lib/libvirt/images")
MIB = 1024**2


@pytest.fixture
def pool() -> Iterator[str]:
    if not _libvirtd_answers():
        pytest.skip(f"libvirtd at {SYSTEM_URI} is not answering (start it with .ci/services.sh)")
    name = f"kvt-pool-{uuid.uuid4().hex[:8]}"
    path = POOLS_HOME / name
    conn = libvirt.open(SYSTEM_URI)
    xml = f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
    made = conn.storagePoolDefineXML(xml, 0)
    try:
        made.build(0)
        made.create(0)
        yield name
    finally:
        if made.isActive():
            made.destroy()
        made.undefine()
        conn.close()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pool_dir(pool: str) -> Path:
    return POOLS_HOME / pool


@pytest.fixture
def worker(tmp_path: Path, pool: str) -> Iterator[Pipeline]:
    images = tmp_path / "images"
    images.mkdir()
    settings = Settings(
        host="kvt-host",
        libvirt_uri=SYSTEM_URI,
        storage_dirs=[images, CACHE_DIR],
        storage_pool=pool,
        state_dir=tmp_path / "state",
    )
    assembly = assemble(settings)
    pipeline = assembly.pipeline
    pipeline.images = images
    yield pipeline
    assembly.close()


def send(dispatcher: Pipeline, handler: str, command: str, dry_run: bool = False, **data: Any) -> Reply:
    body = {"handler": handler, "command": command, "data": data, "dry_run": dry_run}
    return dispatcher.handle(Delivery(body=json.dumps(body).encode(), content_type="application/json"))


@pytest.fixture
def storage(worker: Pipeline):
    def call(command: str, dry_run: bool = False, **data: Any) -> Reply:
        return send(worker, "StorageHandler", command, dry_run, **data)

    return call


@pytest.fixture
def vm(worker: Pipeline):
    def call(command: str, dry_run: bool = False, **data: Any) -> Reply:
        return send(worker, "VmHandler", command, dry_run, **data)

    return call


@pytest.fixture
def domains() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    conn = libvirt.open(SYSTEM_URI)
    try:
        for name in names:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    finally:
        conn.close()


def image_info(path: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def volume(storage, name: str) -> dict[str, Any]:
    reply = storage("volumes")
    assert reply.code == 0, reply.data
    return next(v for v in reply.data["volumes"] if v["name"] == name)


def test_pools_lists_the_test_pool_with_its_path_and_state(storage, pool, pool_dir):
    reply = storage("pools")
    assert reply.code == 0, reply.data
    mine = next(p for p in reply.data["pools"] if p["name"] == pool)
    assert mine["type"] == "dir" and mine["path"] == str(pool_dir) and mine["state"] == "running"
    assert mine["capacity"] > 0 and mine["available"] > 0


def test_a_linked_clone_is_a_qcow2_over_the_base_with_the_backing_format_written_in_it(storage, pool_dir):
    assert storage("volume_create", name="base.qcow2", size_gib=0.0625).code == 0
    plan = storage("volume_clone", dry_run=True, name="kvt-clone.qcow2", source="base.qcow2").data["plan"]
    assert "linked clone" in plan[0] and "backing format qcow2" in plan[0]
    assert not (pool_dir / "kvt-clone.qcow2").exists(), "a dry run changed the pool"
    reply = storage("volume_clone", name="kvt-clone.qcow2", source="base.qcow2")
    assert reply.code == 0, reply.data
    assert reply.data["backing"] == {"path": str(pool_dir / "base.qcow2"), "format": "qcow2"}
    info = image_info(reply.data["path"])  # what qemu-img itself reads from the clone's header
    assert info["format"] == "qcow2" and info["backing-filename"] == str(pool_dir / "base.qcow2")
    assert info["backing-filename-format"] == "qcow2"
    assert volume(storage, "base.qcow2")["clones"] == ["kvt-clone.qcow2"]
    again = storage("volume_clone", name="kvt-clone.qcow2", source="base.qcow2")
    assert again.code == 0 and again.data["changed"] is False


def test_a_raw_image_from_a_storage_directory_is_cloned_with_backing_format_raw(storage, worker, pool_dir):
    raw = worker.images / "kvt-base.img"
    raw.write_bytes(b"\0" * MIB)
    reply = storage("volume_clone", name="kvt-over-raw.qcow2", source="kvt-base.img")
    assert reply.code == 0, reply.data
    info = image_info(reply.data["path"])
    assert info["backing-filename"] == str(raw) and info["backing-filename-format"] == "raw"


def test_a_full_copy_has_no_backing_and_the_same_content(storage, pool_dir):
    base = pool_dir / "data.raw"
    base.write_bytes(os.urandom(2 * MIB))
    assert storage("volumes").code == 0  # the pool is refreshed: the file is a volume now
    plan = storage("volume_clone", dry_run=True, name="kvt-copy.raw", source="data.raw", linked=False)
    assert plan.code == 0 and "full copy" in plan.data["plan"][0]
    reply = storage("volume_clone", name="kvt-copy.raw", source="data.raw", linked=False, size_gib=0.0625)
    assert reply.code == 0, reply.data
    assert reply.data["backing"] is None and reply.data["format"] == "raw"
    copied = (pool_dir / "kvt-copy.raw").read_bytes()
    assert copied[: 2 * MIB] == base.read_bytes() and len(copied) == 64 * MIB  # grown as asked
    assert not [p for p in os.listdir(pool_dir) if p.endswith(".kvt-partial")]


class CancelHalfway:
    """The §8 interface a copy takes from its context: cancelled once the copy reported ``at`` percent."""

    def __init__(self, at: float):
        self.msg_id, self.dry_run, self.deadline = str(uuid.uuid4()), False, None
        self.at = at
        self.seen: list[float | None] = []
        self._cancel = threading.Event()

    def progress(self, percent: float | None, phase: str | None = None) -> None:
        self.seen.append(percent)
        if percent is not None and percent >= self.at:
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


def test_a_full_copy_cancelled_halfway_answers_30013_and_leaves_no_file(storage, worker, pool_dir):
    source = pool_dir / "big.raw"
    with open(source, "wb") as out:  # real data, so that qemu-img has to copy every block
        for _ in range(192):
            out.write(os.urandom(MIB))
    assert storage("volumes").code == 0
    bound = worker.registry.lookup("StorageHandler", "volume_clone")
    ctx = CancelHalfway(at=10)
    with pytest.raises(Cancelled) as raised:
        bound.call(VolumeClone(name="kvt-cancelled.raw", source="big.raw", linked=False), ctx)
    assert raised.value.code == 30013
    assert any(p is not None and 10 <= p < 100 for p in ctx.seen), ctx.seen  # it was cut in the middle
    dest = pool_dir / "kvt-cancelled.raw"
    assert not dest.exists() and not Path(partial_path(str(dest))).exists()
    assert sorted(os.listdir(pool_dir)) == ["big.raw"]
    assert "kvt-cancelled.raw" not in [v["name"] for v in storage("volumes").data["volumes"]]


def test_a_full_copy_reports_its_progress_through_the_context_up_to_100(worker, pool_dir):
    with open(pool_dir / "some.raw", "wb") as out:
        out.write(os.urandom(16 * MIB))
    bound = worker.registry.lookup("StorageHandler", "volume_clone")
    ctx = CancelHalfway(at=1000)  # never cancels: only records
    reply = bound.call(VolumeClone(name="kvt-progress.raw", source="some.raw", linked=False), ctx)
    assert reply["changed"] is True and reply["capacity"] == 16 * MIB
    assert ctx.seen[-1] == 100.0 and ctx.seen == sorted(ctx.seen), ctx.seen


def test_a_failed_full_copy_leaves_no_file(storage, pool_dir):
    broken = pool_dir / "broken.qcow2"  # a qcow2 over a backing file that is gone: qemu-img cannot read it
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", str(pool_dir / "gone.raw"), "-F", "raw", broken, "1M"],
        check=True,
    )
    storage("volumes")
    reply = storage("volume_clone", name="kvt-broken-copy.qcow2", source="broken.qcow2", linked=False)
    assert reply.code == 99999 and "qemu-img convert failed" in reply.data["detail"], reply.data
    assert sorted(os.listdir(pool_dir)) == ["broken.qcow2"]


def test_a_symlink_in_the_pool_leading_out_is_neither_cloned_nor_deleted_through(storage, worker, pool_dir):
    os.symlink("/etc/hostname", pool_dir / "escape.raw")
    os.symlink("/etc/hostname", worker.images / "escape.img")
    assert "escape.raw" in [v["name"] for v in storage("volumes").data["volumes"]]  # libvirt sees it
    for source in ("escape.raw", str(pool_dir / "escape.raw"), "escape.img", str(worker.images / "escape.img")):
        for linked in (True, False):
            reply = storage("volume_clone", name="kvt-out.qcow2", source=source, linked=linked)
            assert reply.code == 30006 and "outside" in reply.data["detail"], (source, reply.data)
    assert storage("volume_delete", name="escape.raw").code == 30006
    assert storage("volume_resize", name="escape.raw", size_gib=1).code == 30006
    assert os.path.islink(pool_dir / "escape.raw") and sorted(os.listdir(pool_dir)) == ["escape.raw"]


def test_a_file_put_in_the_pool_behind_libvirts_back_is_never_overwritten(storage, pool_dir):
    storage("volume_create", name="base.qcow2", size_gib=0.0625)
    (pool_dir / "kvt-taken.qcow2").write_bytes(b"someone else's data")
    for linked in (True, False):
        reply = storage("volume_clone", name="kvt-taken.qcow2", source="base.qcow2", linked=linked)
        assert reply.code == 30006, reply.data
    assert storage("volume_create", name="kvt-taken.qcow2", size_gib=0.0625).code == 30006
    assert (pool_dir / "kvt-taken.qcow2").read_bytes() == b"someone else's data"


def test_volume_create_again_is_success_and_a_different_one_is_30006(storage):
    first = storage("volume_create", name="kvt-v.raw", size_gib=0.01, format="raw")
    assert first.code == 0 and first.data["changed"] is True and first.data["format"] == "raw"
    again = storage("volume_create", name="kvt-v.raw", size_gib=0.01, format="raw")
    assert again.code == 0 and again.data["changed"] is False
    assert storage("volume_create", name="kvt-v.raw", size_gib=0.02, format="raw").code == 30006


def test_resize_grows_refuses_to_shrink_and_repeats_as_no_change(storage):
    storage("volume_create", name="kvt-r.qcow2", size_gib=0.0625)
    assert storage("volume_resize", name="kvt-r.qcow2", size_gib=0.03).code == 30006
    grown = storage("volume_resize", name="kvt-r.qcow2", size_gib=0.125)
    assert grown.code == 0 and grown.data["changed"] is True and grown.data["live"] is False
    assert image_info(grown.data["path"])["virtual-size"] == 128 * MIB
    assert storage("volume_resize", name="kvt-r.qcow2", size_gib=0.125).data["changed"] is False


def test_missing_pool_and_missing_volume_are_30010(storage):
    assert storage("volumes", pool="kvt-no-such-pool").code == 30010
    assert storage("volume_delete", name="kvt-none.qcow2").code == 30010
    assert storage("volume_resize", name="kvt-none.qcow2", size_gib=1).code == 30010
    assert storage("volume_clone", name="kvt-c.qcow2", source="kvt-none.qcow2").code == 30010
    assert storage("volume_create", pool="kvt-no-such-pool", name="x.qcow2", size_gib=1).code == 30010


def test_define_with_clone_of_makes_a_linked_clone_the_base_cannot_go_and_undefine_removes_the_clone(
    storage, vm, domains, pool_dir
):
    storage("volume_create", name="base.qcow2", size_gib=0.0625)
    name = vm_name()
    domains.append(name)
    plan = vm("define", dry_run=True, name=name, disks=[{"clone_of": "base.qcow2"}])
    assert plan.code == 0, plan.data
    assert plan.data["plan"][0].endswith(f"over {pool_dir / 'base.qcow2'} (backing format qcow2)")
    defined = vm("define", name=name, disks=[{"clone_of": "base.qcow2"}])
    assert defined.code == 0, defined.data
    (clone,) = defined.data["volumes"]
    assert image_info(clone)["backing-filename-format"] == "qcow2"
    assert volume(storage, Path(clone).name)["used_by"] == [name]
    refused = storage("volume_delete", name="base.qcow2")
    assert refused.code == 30004 and refused.data["clones"] == [Path(clone).name]
    assert storage("volume_delete", name=Path(clone).name).code == 30004  # the VM uses it
    assert vm("undefine", name=name, remove_storage=True).data["removed_volumes"] == [clone]
    assert not Path(clone).exists()
    deleted = storage("volume_delete", name="base.qcow2")
    assert deleted.code == 0 and not (pool_dir / "base.qcow2").exists()


def test_a_linked_clone_boots_the_guest_is_used_by_it_and_grows_live(storage, vm, domains, guest, pool_dir):
    storage("volume_create", name="base.qcow2", size_gib=0.0625)
    clone = storage("volume_clone", name="kvt-boot.qcow2", source="base.qcow2").data["path"]
    name = vm_name()
    domains.append(name)
    disk = (
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{clone}'/><target dev='vda' bus='virtio'/></disk>"
    )
    xml = guest_xml(name, guest).replace("<devices>", f"<devices>{disk}")
    assert vm("define", xml=xml).code == 0
    assert vm("start", name=name).code == 0
    wait_for_ready_line(name)
    conn = libvirt.open(SYSTEM_URI)
    try:
        dom = conn.lookupByName(name)
        live = dom.XMLDesc(0)
        assert f"<source file='{pool_dir / 'base.qcow2'}'" in live  # QEMU opened the chain: the base under the clone
        assert volume(storage, "kvt-boot.qcow2")["used_by"] == [name]
        plan = storage("volume_resize", dry_run=True, name="kvt-boot.qcow2", size_gib=0.125)
        assert f"live, through running VM {name} (vda)" in plan.data["plan"][0]
        grown = storage("volume_resize", name="kvt-boot.qcow2", size_gib=0.125)
        assert grown.code == 0 and grown.data["live"] is True, grown.data
        assert dom.blockInfo("vda")[0] == 128 * MIB  # libvirt's own view of the running disk
        assert dom.isActive()
    finally:
        conn.close()


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", *args], check=True)


def _disk_xml(name: str, path: Path) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory>32768</memory><os><type>hvm</type></os><devices>"
        f"<disk type='file' device='disk'><source file='{path}'/><target dev='vda'/></disk></devices></domain>"
    )


def test_raw_xml_may_name_a_linked_clone_only_over_a_named_format_inside_the_storage_dirs(call, images, tmp_path):
    _qemu_img("-f", "raw", str(images / "base.raw"), "1M")
    _qemu_img("-f", "qcow2", "-b", str(images / "base.raw"), "-F", "raw", str(images / "clone.qcow2"))
    _qemu_img("-f", "qcow2", "-b", str(images / "clone.qcow2"), "-F", "qcow2", str(images / "clone2.qcow2"))
    for good in ("clone.qcow2", "clone2.qcow2"):  # one level and a chain of two
        reply = call("define", dry_run=True, xml=_disk_xml(vm_name(), images / good))
        assert reply.code == 0, (good, reply.data)
    outside = tmp_path / "outside.raw"
    _qemu_img("-f", "raw", str(outside), "1M")
    _qemu_img("-f", "qcow2", "-b", str(outside), "-F", "raw", str(images / "out.qcow2"))
    json_name = 'json:{"file.driver":"file","file.filename":"/etc/hostname"}'
    _qemu_img("-f", "qcow2", "-u", "-b", json_name, "-F", "raw", str(images / "json.qcow2"), "1M")
    # a link in the chain that escapes: the first level is fine, the second is not
    _qemu_img("-f", "qcow2", "-b", str(images / "out.qcow2"), "-F", "qcow2", str(images / "deep.qcow2"))
    base = str(images / "base.raw").encode()  # a backing file inside, but no backing-format extension
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (512).to_bytes(8, "big") + len(base).to_bytes(4, "big")
    (images / "unnamed.qcow2").write_bytes(header.ljust(512, b"\0") + base)
    for bad, why in (
        ("out.qcow2", "outside the storage directories"),
        ("json.qcow2", "not a plain file name"),
        ("deep.qcow2", "outside the storage directories"),
        ("unnamed.qcow2", "does not name"),
    ):
        reply = call("define", dry_run=True, xml=_disk_xml(vm_name(), images / bad))
        assert reply.code == 30006 and why in reply.data["detail"], (bad, reply.data)


def test_commands_on_one_volume_share_a_resource_key_whether_or_not_the_default_pool_is_named(worker, pool):
    keys = set()
    for command, data in (
        ("volume_create", {"name": "kvt-k.qcow2", "size_gib": 1}),
        ("volume_clone", {"name": "kvt-k.qcow2", "source": "b", "pool": pool}),
        ("volume_resize", {"name": "kvt-k.qcow2", "size_gib": 2, "pool": pool}),
        ("volume_delete", {"name": "kvt-k.qcow2"}),
    ):
        bound = worker.registry.lookup("StorageHandler", command)
        keys.add(bound.spec.resource(bound.spec.model.model_validate(data)))
    assert keys == {"volume:kvt-k.qcow2"}
