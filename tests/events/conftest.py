"""Workers with the test event source, and a follower that collects what a consumer sees."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvmworker.client import Client
from kvmworker.events.consumer import Gap
from kvmworker.events.model import Event
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from kvmworker.transport.connection import delete_host_queue
from tests.events.handlers import SOURCE, EventProbeHandler


@dataclass
class Follower:
    """``Client.events`` on a thread of its own: ``items`` grows as events (and gaps) arrive."""

    items: list[Event | Gap] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    @property
    def events(self) -> list[Event]:
        return [item for item in self.items if isinstance(item, Event)]

    @property
    def gaps(self) -> list[Gap]:
        return [item for item in self.items if isinstance(item, Gap)]

    def of(self, source: str = SOURCE) -> list[Event]:
        return [e for e in self.events if e.source == source]

    def wait_for(self, predicate: Callable[[Follower], bool], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self) or self.error:
                break
            time.sleep(0.05)
        assert not self.error, self.error
        return predicate(self)


@pytest.fixture
def follow() -> Iterator[Callable[..., Follower]]:
    """``follow(client, host=…, source=…, queue=…)``: started, and bound when it returns."""
    started: list[Follower] = []

    def start(client: Client, **kwargs: Any) -> Follower:
        follower = Follower()

        def run() -> None:
            try:
                for item in client.events(ready=follower.ready, stop=follower.stop, **kwargs):
                    follower.items.append(item)
            except BaseException as exc:  # shown by wait_for
                follower.error.append(exc)

        follower.thread = threading.Thread(target=run, daemon=True)
        follower.thread.start()
        started.append(follower)
        assert follower.ready.wait(15), "the event queue was not bound"
        return follower

    yield start
    for follower in started:
        follower.stop.set()
    for follower in started:
        follower.thread.join(10)


@dataclass
class EventWorker:
    running: RunningWorker
    probe: EventProbeHandler
    settings: Settings

    @property
    def host(self) -> str:
        return self.settings.host

    def stop(self) -> None:
        self.running.stop(10)


@pytest.fixture
def start_event_worker(tmp_path) -> Iterator[Callable[..., EventWorker]]:
    """``start_event_worker(broker, host, **settings)``: an in-process worker with ``EventProbeHandler``."""
    made: list[EventWorker] = []

    def start(broker: str, host: str, **overrides: Any) -> EventWorker:
        state = overrides.pop("state_dir", tmp_path / f"state-{host}")
        settings = Settings(host=host, broker=broker, state_dir=state, workers=4, **overrides)
        probe = EventProbeHandler()
        running = start_worker(settings, extra_handlers=[probe], event_users=[probe])
        assert running.worker.connected.wait(30), "worker did not connect to the broker"
        worker = EventWorker(running, probe, settings)
        made.append(worker)
        return worker

    yield start
    for worker in made:
        worker.stop()
        delete_host_queue(worker.settings.broker, worker.host)


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


def contiguous(numbers: list[int]) -> bool:
    return numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else True


def free_health_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_samples(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
