"""Per-VM figures on ``/metrics``: the same reading as ``VmHandler.stats``, taken at each scrape.

Label cardinality is bounded: at most ``max_vms`` VMs get series of their own (the first by name, so the set is
stable between scrapes), each with at most ``MAX_DEVICES`` disks and interfaces. VMs past the cap are counted in
``kvmworker_vm_unlisted`` and get no series; a VM that went away simply stops being reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("kvmworker.metrics")

MAX_VMS = 200
MAX_DEVICES = 16

_DISK = {
    "rd_bytes": ("kvmworker_vm_disk_read_bytes", "Bytes read by the VM from a disk."),
    "wr_bytes": ("kvmworker_vm_disk_written_bytes", "Bytes written by the VM to a disk."),
    "rd_reqs": ("kvmworker_vm_disk_read_requests", "Read requests of the VM to a disk."),
    "wr_reqs": ("kvmworker_vm_disk_write_requests", "Write requests of the VM to a disk."),
}
_NIC = {
    "rx_bytes": ("kvmworker_vm_network_receive_bytes", "Bytes the VM received on an interface."),
    "tx_bytes": ("kvmworker_vm_network_transmit_bytes", "Bytes the VM sent on an interface."),
    "rx_packets": ("kvmworker_vm_network_receive_packets", "Packets the VM received on an interface."),
    "tx_packets": ("kvmworker_vm_network_transmit_packets", "Packets the VM sent on an interface."),
    "rx_drop": ("kvmworker_vm_network_receive_drops", "Received packets dropped on an interface."),
    "tx_drop": ("kvmworker_vm_network_transmit_drops", "Sent packets dropped on an interface."),
}


class VmStatsCollector(Collector):
    def __init__(self, read: Callable[[], list[dict[str, Any]]], max_vms: int = MAX_VMS):
        self._read = read
        self.max_vms = max_vms

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed below; describing would cost a libvirt reading at registration

    def collect(self) -> Iterator[Metric]:
        try:
            vms = self._read()
            up = 1.0
        except Exception as exc:  # libvirt down: the scrape still answers, and says so
            log.debug("no VM figures for /metrics: %s", exc)
            vms, up = [], 0.0
        yield GaugeMetricFamily("kvmworker_vm_stats_up", "1 when the last VM stats reading succeeded.", value=up)
        shown = sorted(vms, key=lambda vm: vm["name"])[: self.max_vms]
        yield GaugeMetricFamily(
            "kvmworker_vm_unlisted",
            f"VMs past the cap of {self.max_vms} with series of their own: counted here only.",
            value=len(vms) - len(shown),
        )
        yield from _families(shown)


def _families(vms: list[dict[str, Any]]) -> Iterator[Metric]:
    stale = GaugeMetricFamily("kvmworker_vm_stale", "1 when the VM's figures did not come back in time.", labels=["vm"])
    cpu = CounterMetricFamily("kvmworker_vm_cpu_seconds", "CPU time the VM consumed.", labels=["vm"])
    vcpus = GaugeMetricFamily("kvmworker_vm_vcpus", "vCPUs of the VM.", labels=["vm"])
    actual = GaugeMetricFamily("kvmworker_vm_memory_actual_bytes", "Memory the VM currently has.", labels=["vm"])
    rss = GaugeMetricFamily("kvmworker_vm_memory_rss_bytes", "Resident memory of the VM's process.", labels=["vm"])
    disks = {k: CounterMetricFamily(n, h, labels=["vm", "target"]) for k, (n, h) in _DISK.items()}
    nics = {k: CounterMetricFamily(n, h, labels=["vm", "target"]) for k, (n, h) in _NIC.items()}
    for vm in vms:
        name = vm["name"]
        stale.add_metric([name], float(vm["stale"]))
        if vm["stale"]:
            continue
        cpu.add_metric([name], (vm["cpu_time_ns"] or 0) / 1e9)
        vcpus.add_metric([name], vm["vcpus"] or 0)
        if vm["memory"].get("actual_kib") is not None:
            actual.add_metric([name], vm["memory"]["actual_kib"] * 1024)
        if vm["memory"].get("rss_kib") is not None:
            rss.add_metric([name], vm["memory"]["rss_kib"] * 1024)
        _devices(disks, name, vm["disks"])
        _devices(nics, name, vm["interfaces"])
    yield from (stale, cpu, vcpus, actual, rss, *disks.values(), *nics.values())


def _devices(families: dict[str, CounterMetricFamily], vm: str, devices: list[dict[str, Any]]) -> None:
    for device in devices[:MAX_DEVICES]:
        for key, family in families.items():
            family.add_metric([vm, str(device["target"])], device[key] or 0)


def register_vm_metrics(registry: CollectorRegistry, read: Callable[[], Any], max_vms: int = MAX_VMS) -> None:
    """Hook-up: ``read`` (the VM handler's ``all_stats``) feeds per-VM series into ``registry``."""
    registry.register(VmStatsCollector(read, max_vms))
