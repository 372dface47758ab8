"""Events (§7): what changes on the host, published to the ``kvmworker.events`` topic exchange.

Sources get an ``Emitter`` (``emit``, ``request_sync``, ``degraded``/``recovered``) and, when they act for a
command, consult ``Causes``; the whole picture for ``online``/``sync`` comes from ``Pictures`` providers.
"""

from kvmworker.events.buffer import EventBuffer
from kvmworker.events.causes import Causes
from kvmworker.events.emitter import Emitter, StateHooks, SyncTrigger
from kvmworker.events.hub import Events
from kvmworker.events.model import EXCHANGE, Event, binding_key, routing_key
from kvmworker.events.pictures import NETWORKS, VMS, PictureProvider, Pictures
from kvmworker.lazyimport import parts_only

parts_only("prometheus_client")  # before events/metrics.py: the metric types only, not the exposition

__all__ = [
    "EXCHANGE",
    "NETWORKS",
    "VMS",
    "Causes",
    "Emitter",
    "Event",
    "EventBuffer",
    "Events",
    "PictureProvider",
    "Pictures",
    "StateHooks",
    "SyncTrigger",
    "binding_key",
    "routing_key",
]
