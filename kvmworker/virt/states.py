"""libvirt's domain state numbers as the words replies use, and the list filters by state."""

from __future__ import annotations

import libvirt

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

LIST_FLAGS: dict[str, int] = {  # keyed by the words of kvmworker.api.vm.StateFilter
    "active": libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE,
    "inactive": libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE,
    "running": libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING,
    "paused": libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED,
    "shutoff": libvirt.VIR_CONNECT_LIST_DOMAINS_SHUTOFF,
    "other": libvirt.VIR_CONNECT_LIST_DOMAINS_OTHER,
    "persistent": libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT,
    "transient": libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT,
}


def state_name(state: int) -> str:
    return STATE_NAMES.get(state, f"unknown({state})")
