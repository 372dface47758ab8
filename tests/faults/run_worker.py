"""A worker process for fault tests: ``python -m tests.faults.run_worker --host H --broker URL ...``.

Built as ``kvmworker worker`` builds it (settings, journal, trust, transport), plus the test-only ProbeHandler
and StateHandler; other settings (visibility timeout, keys) come from KVMWORKER_* variables.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from kvmworker.cli.common import setup_logging
from kvmworker.runtime import build_worker
from kvmworker.settings import Settings
from tests.faults.handlers import StateHandler
from tests.support.handlers import ProbeHandler


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--effects", required=True, type=Path)
    args = parser.parse_args()
    settings = Settings(host=args.host, broker_url=args.broker, state_dir=args.state_dir)
    setup_logging(settings)
    worker, _ = build_worker(settings, extra_handlers=[ProbeHandler(args.effects), StateHandler(args.effects)])
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    print("worker ready", flush=True)
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
