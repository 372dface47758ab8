"""Fault fixtures shared by the modules that bring their own private RabbitMQ node as ``rabbit``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import WorkerProcess


@pytest.fixture
def worker(rabbit, tmp_path) -> Iterator[WorkerProcess]:
    """A worker process on the module's private node (modules with other needs define their own)."""
    w = WorkerProcess(rabbit.url, tmp_path)
    w.start()
    yield w
    w.stop_all()
