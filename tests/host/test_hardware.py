import os
from pathlib import Path

from kvmworker.inventory.hardware import DMI_FIELDS, HardwareInventory
from kvmworker.inventory.pciids import PciNames
from kvmworker.protocol.codes import Code
from tests.host.conftest import host_handler

DMI = Path("/sys/class/dmi/id")
PCI = Path("/sys/bus/pci/devices")


def _file_or_none(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def test_dmi_fields_equal_the_files_of_sys_class_dmi_id(call):
    """On a machine without DMI (this CI VM) every field is null; elsewhere each equals its file."""
    reply = call(host_handler(), "hardware")
    assert reply.code == Code.OK
    for group, files in DMI_FIELDS.items():
        for key, name in files.items():
            assert reply.data["dmi"][group][key] == _file_or_none(DMI / name), f"{group}.{key}"


def test_dmi_fields_are_read_from_the_tree_the_inventory_is_pointed_at(tmp_path):
    dmi = tmp_path / "class/dmi/id"
    dmi.mkdir(parents=True)
    (tmp_path / "devices").mkdir()
    (dmi / "sys_vendor").write_text("Acme Servers\n")
    (dmi / "product_uuid").write_text("4c4c4544-0000-1010-8000-b7c04f333532\n")
    (dmi / "bios_date").write_text("03/14/2024\n")
    found = HardwareInventory(sys=tmp_path).read()
    assert found["dmi"]["system"]["vendor"] == "Acme Servers"
    assert found["dmi"]["system"]["uuid"] == "4c4c4544-0000-1010-8000-b7c04f333532"
    assert found["dmi"]["bios"]["date"] == "03/14/2024"
    assert found["dmi"]["board"]["serial"] is None
    assert found["pci"] == [] and found["numa"] == []


def test_every_pci_device_is_listed_with_its_ids_class_and_driver():
    found = {d["address"]: d for d in HardwareInventory().read()["pci"]}
    assert sorted(found) == sorted(os.listdir(PCI)) if PCI.is_dir() else found == {}
    for address, device in found.items():
        assert device["vendor_id"] == _file_or_none(PCI / address / "vendor").removeprefix("0x")
        assert device["class"] == _file_or_none(PCI / address / "class").removeprefix("0x")
        driver = PCI / address / "driver"
        assert device["driver"] == (os.path.basename(os.readlink(driver)) if driver.exists() else None)


def test_pci_names_come_from_pci_ids_when_the_file_exists(tmp_path):
    ids = tmp_path / "pci.ids"
    ids.write_text(
        "# comment\n1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n\t\t1af4 1100  QEMU\n"
        "C 02  Network controller\n\t00  Ethernet controller\nC 01  Mass storage controller\n"
        "\t06  SATA controller\n\t\t01  AHCI 1.0\n"
    )
    names = PciNames(paths=(tmp_path / "absent.ids", ids))
    assert names.vendor("1af4") == "Red Hat, Inc."
    assert names.device("1af4", "1041") == "Virtio 1.0 network device"
    assert names.class_name("020000") == "Ethernet controller"
    assert names.class_name("010601") == "AHCI 1.0"
    assert names.class_name("018000") == "Mass storage controller"
    assert PciNames(paths=(tmp_path / "absent.ids",)).vendor("1af4") is None


def test_numa_nodes_list_their_cpus_and_memory():
    nodes = HardwareInventory().read()["numa"]
    node_dir = Path("/sys/devices/system/node")
    expected = sorted(int(n[4:]) for n in os.listdir(node_dir) if n[4:].isdigit()) if node_dir.is_dir() else []
    assert [n["node"] for n in nodes] == expected
    if nodes:
        assert sorted(c for n in nodes for c in n["cpus"]) == sorted(range(os.cpu_count()))
        assert all(n["memory_total"] > 0 for n in nodes)


def test_a_sysfs_that_is_not_mounted_is_a_hardware_info_failure(call, tmp_path):
    reply = call(host_handler(hardware=HardwareInventory(sys=tmp_path)), "hardware")
    assert reply.code == Code.HARDWARE_INFO_FAILED == 40401
    assert "sysfs" in reply.data["detail"]
