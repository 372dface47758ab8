"""A worker process with the test-only handlers: ``python -m tests.support.run_worker --host H --broker URL ...``.

Built as ``kvmworker worker`` builds it (settings, journal, trust, transport; other settings from KVMWORKER_*
variables), plus ProbeHandler, EffectsHandler and StateHandler recording their effects in ``--effects``, and
EventProbeHandler (commands that emit events), SlowHandler (long-running commands, §8).
``--pause-marker F`` stalls between recording a reply and publishing it (touching F first);
``--die-after-netlink-steps N`` SIGKILLs the process right after the N-th netlink step of a network command.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from kvmworker.cli.common import setup_logging
from kvmworker.runtime import build_worker
from kvmworker.settings import Settings
from tests.events.handlers import EventProbeHandler
from tests.faults.handlers import StateHandler
from tests.journal.effects import EffectsHandler, PauseBeforePublish
from tests.operations.handlers import SlowHandler
from tests.support.handlers import ProbeHandler


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--broker", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--effects", required=True, type=Path)
    parser.add_argument("--pause-marker", type=Path, default=None)
    parser.add_argument("--die-after-netlink-steps", type=int, default=None)
    args = parser.parse_args()
    if args.die_after_netlink_steps:
        die_after_netlink_steps(args.die_after_netlink_steps)
    settings = Settings(host=args.host, broker_url=args.broker, state_dir=args.state_dir)
    setup_logging(settings)
    handlers = [ProbeHandler(args.effects), EffectsHandler(args.effects), StateHandler(args.effects)]
    probe = EventProbeHandler()
    handlers += [probe, SlowHandler(args.effects)]
    pause = [PauseBeforePublish(args.pause_marker)] if args.pause_marker else []
    worker, assembly = build_worker(settings, extra_handlers=handlers, extra_middleware=pause, event_users=[probe])
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    print("worker ready", flush=True)
    worker.run()
    assembly.close()  # as ``kvmworker worker`` does: the journal is closed (and checkpointed) before the exit
    return 0


def die_after_netlink_steps(limit: int) -> None:
    """SIGKILL this process right after the ``limit``-th netlink step a NetworkHandler command applies:
    the kernel keeps what was done, the worker forgets everything (no rollback runs)."""
    from kvmworker.handlers import network
    from kvmworker.netplane.plan import execute

    applied = [0]

    class Dying:
        def __init__(self, step):
            self.step = step

        def apply(self, nl):
            undo = self.step.apply(nl)
            applied[0] += 1
            if applied[0] >= limit:
                os.kill(os.getpid(), signal.SIGKILL)
            return undo

        def describe(self):
            return self.step.describe()

    network.execute = lambda steps, nl, commit=None: execute([Dying(s) for s in steps], nl, commit)


if __name__ == "__main__":
    sys.exit(main())
