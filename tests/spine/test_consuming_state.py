"""``Worker.consuming`` and ``Worker.last_drain``: what readiness and a watchdog read, on the embedded broker."""

from __future__ import annotations

import time

from kvmworker.runtime import start_worker
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.support.processes import wait_for


def test_a_worker_is_consuming_while_its_loop_drains_and_not_once_it_has_stopped(tmp_path):
    running = start_worker(Settings(host=unique("kvt-cs-"), broker="memory://", state_dir=tmp_path / "state"))
    try:
        assert running.worker.consuming.wait(10), "the worker never started consuming"
        assert wait_for(lambda: running.worker.last_drain > 0, 5), "the consuming loop never passed"
        first = running.worker.last_drain
        time.sleep(0.3)
        assert running.worker.last_drain > first > 0, "the consuming loop does not pass over the connection"
    finally:
        assert running.stop(timeout=10)
    assert not running.worker.consuming.is_set()
    assert running.worker.connected is running.worker.consuming  # the older name reads the same state
