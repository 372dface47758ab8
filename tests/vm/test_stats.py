"""VmHandler.stats and its /metrics series on libvirt's test driver: the shape, the filter, the label cap."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from kvmworker.observability.server import HealthServer
from kvmworker.observability.vm_metrics import VmStatsCollector, register_vm_metrics
from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.conftest import AMQP_URL, require_broker, unique
from tests.journal.test_metrics_endpoint import free_port, samples
from tests.vm.test_commands import define


def test_stats_reports_every_running_vm_with_its_figures_and_none_stale(call):
    names = [define(call) for _ in range(3)]
    for name in names:
        assert call("start", name=name).code == 0
    reply = call("stats")
    assert reply.code == 0, reply.data
    by_name = {vm["name"]: vm for vm in reply.data["vms"]}
    for name in names:
        vm = by_name[name]
        assert (vm["state"], vm["stale"]) == ("running", False)
        assert vm["cpu_time_ns"] >= 0 and {"actual_kib", "rss_kib"} <= set(vm["memory"])
        assert isinstance(vm["disks"], list) and isinstance(vm["interfaces"], list)
    assert reply.data["stale"] == 0 and reply.data["count"] == len(reply.data["vms"])
    for name in names:
        call("destroy", name=name)
        call("undefine", name=name)


def test_stats_of_named_vms_reports_only_those_and_an_unknown_name_is_30007(call):
    name = define(call)
    reply = call("stats", names=[name])
    assert [vm["name"] for vm in reply.data["vms"]] == [name] and reply.data["vms"][0]["state"] == "shutoff"
    missing = call("stats", names=[name, "kvt-missing"])
    assert missing.code == 30007 and missing.data["field"] == "names.1"
    call("undefine", name=name)


def _scrape(registry: CollectorRegistry) -> dict[str, list]:
    server = HealthServer(0, "127.0.0.1", alive=lambda: (True, ""), ready=lambda: (True, ""), registry=registry)
    server.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read().decode()
    finally:
        server.stop()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_metrics_carry_per_vm_series_from_the_vm_handler(call, test_driver):
    name = define(call)
    call("start", name=name)
    registry = CollectorRegistry()
    register_vm_metrics(registry, next(h for h in test_driver.registry.handlers if h.name == "VmHandler").all_stats)
    families = _scrape(registry)
    assert {s.labels["vm"]: s.value for s in families["kvmworker_vm_stale"]}[name] == 0.0
    assert name in {s.labels["vm"] for s in families["kvmworker_vm_cpu_seconds"]}
    assert families["kvmworker_vm_stats_up"][0].value == 1.0
    call("destroy", name=name)
    call("undefine", name=name)


def _vm(name: str, disks: int = 0) -> dict:
    disk = {"rd_bytes": 1, "wr_bytes": 2, "rd_reqs": 3, "wr_reqs": 4}
    return {
        "name": name, "uuid": name, "state": "running", "cpu_time_ns": 10**9, "vcpus": 1,
        "memory": {"actual_kib": 1024, "rss_kib": 512}, "interfaces": [], "stale": False,
        "disks": [{"target": f"vd{i}", **disk} for i in range(disks)],
    }  # fmt: skip


def test_past_the_cap_vms_get_no_series_of_their_own_and_are_counted(call):
    registry = CollectorRegistry()
    registry.register(VmStatsCollector(lambda: [_vm(f"kvt-{i:03d}", disks=40) for i in range(30)], max_vms=10))
    families = _scrape(registry)
    assert sorted({s.labels["vm"] for s in families["kvmworker_vm_stale"]}) == [f"kvt-{i:03d}" for i in range(10)]
    assert families["kvmworker_vm_unlisted"][0].value == 20
    per_vm_disks = {s.labels["target"] for s in families["kvmworker_vm_disk_read_bytes"] if s.labels["vm"] == "kvt-000"}
    assert len(per_vm_disks) == 16  # devices per VM are capped too


def test_a_failing_reading_still_answers_the_scrape_and_says_so(call):
    def broken() -> list:
        raise RuntimeError("libvirt is gone")

    registry = CollectorRegistry()
    registry.register(VmStatsCollector(broken))
    families = _scrape(registry)
    assert families["kvmworker_vm_stats_up"][0].value == 0.0 and families["kvmworker_vm_stale"] == []


@pytest.mark.broker
def test_a_running_worker_serves_the_per_vm_series_on_its_health_port(tmp_path):
    """The composition root's hook-up, as an operator's scraper sees it: a worker with a health port."""
    amqp_url = require_broker("amqp", AMQP_URL)
    port = free_port()
    settings = Settings(
        host=unique("kvt-vs-"), broker_url=amqp_url, state_dir=tmp_path / "state", health_port=port,
        health_bind="127.0.0.1", libvirt_uri="test:///default",
    )  # fmt: skip
    running = start_worker(settings)
    try:
        assert running.worker.connected.wait(15)
        scraped = samples(port)
    finally:
        running.stop(timeout=10)
    assert scraped[("kvmworker_vm_stale", (("vm", "test"),))] == 0  # the test driver's own running domain
    assert ("kvmworker_vm_cpu_seconds_total", (("vm", "test"),)) in scraped
    assert scraped[("kvmworker_vm_stats_up", ())] == 1 and scraped[("kvmworker_vm_unlisted", ())] == 0
