"""Connect the metrics and command logs to the running worker, and open the health port if configured."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmworker.observability.logs import install_context_filter
from kvmworker.observability.metrics import WorkerMetrics
from kvmworker.observability.vm_metrics import register_vm_metrics
from kvmworker.settings import Settings
from kvmworker.transport.worker import Worker

if TYPE_CHECKING:
    from kvmworker.observability.server import HealthServer

LibvirtProbe = Callable[[], Any]


def observe_worker(
    settings: Settings,
    worker: Worker,
    metrics: WorkerMetrics,
    libvirt: LibvirtProbe,
    vm_stats: Callable[[], Any] | None = None,
) -> HealthServer | None:
    """Returns the health server (already serving); its owner (``Assembly.health``) stops it with the worker."""
    install_context_filter()
    if settings.health_port is None:
        return None
    from kvmworker.observability.server import HealthServer  # and the exposition: only with a health port

    metrics.watch_broker(worker.consuming.is_set)
    metrics.watch_libvirt(libvirt)
    if vm_stats is not None:
        register_vm_metrics(metrics.registry, vm_stats)
    server = HealthServer(
        settings.health_port,
        settings.health_bind,
        alive=lambda: (not worker.wait_stopped(0), "the consumer has stopped"),
        ready=lambda: (worker.consuming.is_set(), "not consuming from the broker"),
        registry=metrics.registry,
    ).start()
    return server


def libvirt_problem(libvirt: LibvirtProbe) -> str | None:
    """At start: None when libvirt answers, else what is wrong and what to do, in words for the operator.

    Opening the connection here also warms it for the first VM command (it is the worker's shared one).
    """
    try:
        libvirt()
    except Exception as exc:
        return (
            f"libvirt is unreachable ({exc}): every VmHandler command answers 30009 until it is. "
            "Networks, namespaces, devices and host inventory work meanwhile. To fix it on Debian: "
            "apt-get install libvirt-daemon-system, then start libvirtd (systemctl start libvirtd, or libvirtd -d "
            "without systemd); or point --libvirt-uri at a running libvirt."
        )
    return None
