"""A worker process with EffectsHandler, for tests that SIGKILL it: ``python -m tests.journal.run_worker ...``.

``--pause-marker F`` appends a middleware after the journal that stalls between recording a reply
and publishing it, the worker otherwise built as ``kvmworker worker`` builds it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from kvmworker.app import build_dispatcher, build_middleware
from kvmworker.cli.common import setup_logging
from kvmworker.settings import Settings
from kvmworker.transport.connection import open_connection
from kvmworker.transport.publisher import Publisher
from kvmworker.transport.worker import Worker
from tests.journal.effects import EffectsHandler, PauseBeforePublish


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--effects-dir", required=True, type=Path)
    parser.add_argument("--pause-marker", type=Path, default=None)
    args = parser.parse_args()
    settings = Settings(host=args.host, broker_url=args.broker, state_dir=args.state_dir, log_level="INFO")
    setup_logging(settings)
    middleware = build_middleware(settings)
    if args.pause_marker:
        middleware.append(PauseBeforePublish(args.pause_marker))
    dispatcher = build_dispatcher(settings, [EffectsHandler(args.effects_dir)], middleware)
    connection = open_connection(settings.broker_url)
    worker = Worker(connection, Publisher(open_connection(settings.broker_url)), dispatcher, settings.host)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    print("worker ready", flush=True)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
