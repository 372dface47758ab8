"""libvirt's domain lifecycle events as the words of a ``vm.lifecycle`` event (INTERFACE §7).

``state`` is libvirt's event name in lower case, ``reason`` its detail in lower case: exactly the names of
libvirt's ``VIR_DOMAIN_EVENT_<EVENT>`` and ``VIR_DOMAIN_EVENT_<EVENT>_<DETAIL>`` constants, so a reader of
libvirt's documentation knows what each means. ``AFTER`` is the VM's state (the words of ``VmHandler.list``
and of the picture) that an event leaves behind, which gives the next event's ``previous``.
"""

from __future__ import annotations

import libvirt

EVENTS: dict[int, tuple[str, dict[int, str]]] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: (
        "defined",
        {
            libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED: "added",
            libvirt.VIR_DOMAIN_EVENT_DEFINED_UPDATED: "updated",
            libvirt.VIR_DOMAIN_EVENT_DEFINED_RENAMED: "renamed",
            libvirt.VIR_DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT: "from_snapshot",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: (
        "undefined",
        {
            libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED: "removed",
            libvirt.VIR_DOMAIN_EVENT_UNDEFINED_RENAMED: "renamed",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_STARTED: (
        "started",
        {
            libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED: "booted",
            libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED: "migrated",
            libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED: "restored",
            libvirt.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "from_snapshot",
            libvirt.VIR_DOMAIN_EVENT_STARTED_WAKEUP: "wakeup",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: (
        "suspended",
        {
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: "paused",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: "migrated",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR: "ioerror",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: "watchdog",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_RESTORED: "restored",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT: "from_snapshot",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: "api_error",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY: "postcopy",
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: "postcopy_failed",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: (
        "resumed",
        {
            libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED: "unpaused",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED: "migrated",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT: "from_snapshot",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY: "postcopy",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED: "postcopy_failed",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_STOPPED: (
        "stopped",
        {
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from_snapshot",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: (
        "shutdown",
        {
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED: "finished",
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST: "guest",
            libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST: "host",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: (
        "pmsuspended",
        {
            libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY: "memory",
            libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED_DISK: "disk",
        },
    ),
    libvirt.VIR_DOMAIN_EVENT_CRASHED: (
        "crashed",
        {
            libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED: "panicked",
            libvirt.VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED: "crashloaded",
        },
    ),
}

AFTER: dict[str, str] = {
    "started": "running",
    "resumed": "running",
    "suspended": "paused",
    "stopped": "shutoff",
    "shutdown": "shutdown",  # the guest is shutting down; libvirt says so until the process ends
    "pmsuspended": "pmsuspended",
    "crashed": "crashed",
}
"""The VM's state after an event. ``defined`` keeps a known state (a config change of a running VM) and is
``shutoff`` for a new VM; ``undefined`` removes a stopped VM (a running one lives on, transient)."""


def names(event: int, detail: int) -> tuple[str, str]:
    """(state, reason) of a lifecycle event; numbers a newer libvirt added are kept as ``event_<n>``/``detail_<n>``."""
    state, details = EVENTS.get(event, (f"event_{event}", {}))
    return state, details.get(detail, f"detail_{detail}")


def state_after(state: str, before: str | None) -> str | None:
    """The VM's state once the event ``state`` happened to a VM that was ``before`` (None: unknown or gone)."""
    if state == "defined":
        return before or "shutoff"
    if state == "undefined":
        return None if before in (None, "shutoff") else before
    return AFTER.get(state, before)
