"""The VM event source: libvirt's domain lifecycle callbacks → ``vm.lifecycle`` events (INTERFACE §7).

It watches the worker's one libvirt connection, which registers its lifecycle callback on every new
connection (a reconnected worker whose callbacks were left on the dead connection would go silent:
kubevirt#194) and hands each event to this source. On every connection the source takes the VMs' states
afresh; libvirt lost is reported ``degraded``; after an outage it reports libvirt ``recovered`` and requests a
``sync``, because events may have been missed meanwhile. It also provides the VMs' part of the picture.

``previous`` is the VM's state before the event in the picture's words (``running``, ``shutoff``, …), as
known from the picture taken at connection and the events since: a consumer holding the last ``sync`` can
check each event against it. ``data`` carries the VM's ``uuid`` and ``vm_state``, its state afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import libvirt

from kvmworker.events import VMS, Causes, Emitter, Events
from kvmworker.events.model import VM_LIFECYCLE
from kvmworker.virt import lifecycle
from kvmworker.virt.connection import LibvirtConnection
from kvmworker.virt.states import state_name

COMPONENT = "libvirt"
"""The name under which the worker's state reports libvirt lost (``degraded``) and regained."""


class VmEventSource:
    """A ``ConnectionWatcher`` of the worker's libvirt connection; thread-safe (callbacks run on libvirt's loop)."""

    def __init__(self, connection: LibvirtConnection, emitter: Emitter, causes: Causes):
        self._connection = connection
        self._emitter = emitter
        self._causes = causes
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}

    def start(self) -> None:
        """Hear every lifecycle event and every connection from now on."""
        self._connection.events.listen(self._on_lifecycle)
        self._connection.watch(self)

    def picture(self) -> dict[str, str]:
        """Every VM and its state, asked of libvirt now (raises 30009 while libvirt is unreachable).

        The first call (the worker's ``online``) also keeps the connection open from then on: events flow
        without waiting for a command, and an outage at start is told to a worker state that listens.
        """
        self._connection.keep_open()
        with self._connection.session() as conn:
            return vm_states(conn)

    # -- ConnectionWatcher -----------------------------------------------------------------------------------

    def attach(self, conn: libvirt.virConnect) -> None:
        # The connection registered its lifecycle callback on ``conn`` just before (it does on every connection):
        # a change from now on is in this picture or in an event.
        states = vm_states(conn)
        with self._lock:
            self._states = states

    def up(self, recovered: bool) -> None:
        if recovered:
            self._emitter.recovered(COMPONENT)
            self._emitter.request_sync("libvirt reconnected")

    def down(self, detail: str) -> None:
        self._emitter.degraded(COMPONENT, detail)

    # -- libvirt's callback ----------------------------------------------------------------------------------

    def _on_lifecycle(self, dom: libvirt.virDomain, event: int, detail: int) -> None:
        self._publish(dom.name(), dom.UUIDString(), *lifecycle.names(event, detail))

    def _publish(self, name: str, uuid: str, state: str, reason: str) -> None:
        with self._lock:
            before = self._states.get(name)
            after = lifecycle.state_after(state, before)
            if after is None:
                self._states.pop(name, None)
            else:
                self._states[name] = after
        data: dict[str, Any] = {"uuid": uuid}
        if after is not None:
            data["vm_state"] = after
        self._emitter.emit(
            *VM_LIFECYCLE,
            name,
            state,
            previous=before,
            reason=reason,
            msg_id=self._causes.cause(cause_key(name, state)),
            data=data,
        )


def cause_key(name: str, state: str) -> str:
    """What ``Causes`` keeps for VM ``name``'s lifecycle event ``state`` (libvirt forbids '/' in a VM name)."""
    return f"vm/{name}/{state}"


@contextmanager
def acting(causes: Causes, name: str, msg_id: str | None, states: Iterable[str]) -> Iterator[None]:
    """While the block runs (and ``causes.window`` after), the events ``states`` of VM ``name`` carry ``msg_id``.

    By event, not by VM: libvirt delivers an event after the call that caused it returned, so the ``defined``
    of a ``define`` may arrive while the next command (``start``) already runs; and a ``virsh destroy`` just
    after a ``start`` is nobody's command. Each is traced to the command that can cause it, or to none.
    """
    with ExitStack() as stack:
        for state in states:
            stack.enter_context(causes.acting(cause_key(name, state), msg_id))
        yield


def vm_states(conn: libvirt.virConnect) -> dict[str, str]:
    """name → state of every domain, in one call (as ``VmHandler.list`` reads them)."""
    stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
    return {dom.name(): state_name(record["state.state"]) for dom, record in stats}


def start_vm_events(connection: LibvirtConnection, events: Events) -> VmEventSource:
    """The worker's VM events: lifecycle events to ``events.emitter``, the ``vms`` part of the picture.

    Connects to nothing yet: the worker's ``online`` asks for the picture, which opens the connection and
    keeps it open (see ``VmEventSource.picture``)."""
    source = VmEventSource(connection, events.emitter, events.causes)
    events.pictures.provide(VMS, source.picture)
    source.start()
    return source
