"""A worker process with the test-only ProbeHandler: ``python -m tests.support.run_worker --host H --broker URL ...``.

Used by tests that must kill a real worker process (SIGKILL) and start it again.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from kvmworker.cli.common import setup_logging
from kvmworker.runtime import build_worker
from kvmworker.settings import Settings
from tests.support.handlers import ProbeHandler


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--counter-dir", required=True, type=Path)
    args = parser.parse_args()
    settings = Settings(host=args.host, broker_url=args.broker, state_dir=args.state_dir, log_level="INFO")
    setup_logging(settings)
    worker, _ = build_worker(settings, extra_handlers=[ProbeHandler(args.counter_dir)])
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    print("worker ready", flush=True)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
