"""The bridge's one broker consumer of events, feeding a fan-out that every ``GET /events`` stream reads.

Started at the first stream (a bridge nobody follows events on consumes nothing), it runs until the bridge
closes, on a private queue bound to every host's events; the streams filter by host and source themselves.
On ``memory://`` there is nothing to relay: the worker in the same process publishes to ``LOCAL`` directly.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kvmworker.events.consumer import Gap, follow
from kvmworker.events.fanout import LOCAL, Fanout

log = logging.getLogger("kvmworker.events")


class Relay:
    def __init__(self, url: str, signer: Any = None):
        self.url = url
        self._signer = signer
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.ready = threading.Event()
        self.fanout = LOCAL if url.startswith("memory:") else Fanout()
        self.local = self.fanout is LOCAL
        if not self.local:
            self.fanout.on_subscribe(self.start)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closing.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="kvmworker-events-relay", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # gaps are each stream's to find (it has its own view); the relay only passes events on
        try:
            for item in follow(self.url, signer=self._signer, ready=self.ready, stop=self._closing):
                if not isinstance(item, Gap):
                    self.fanout.publish(item)
        except Exception:
            log.exception("the event relay stopped")

    def close(self) -> None:
        self._closing.set()
