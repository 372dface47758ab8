"""``kvmworker worker``: the per-host worker in the foreground until SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import signal

from kvmworker.cli.common import add_settings_flags, settings_from, setup_logging
from kvmworker.protocol.urls import mask_url

log = logging.getLogger("kvmworker")

WORKER_FLAGS = (
    "host",
    "broker",
    "state-dir",
    "netns",
    "libvirt-uri",
    "prefetch",
    "workers",
    "max-body",
    "publish-confirms",
    "physical-interfaces",
    "storage-dirs",
    "storage-pool",
    "migration-uri",
    "migration-data-uri",
    "max-migrations",
    "migration-progress-timeout",
    "health-port",
    "health-bind",
    "keys-file",
    "trusted-keys-file",
    "redis-visibility-timeout",
    "journal-max-age-days",
    "journal-max-mb",
    "resync-interval",
    "event-buffer",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run the per-host worker")
    add_settings_flags(parser, *WORKER_FLAGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kvmworker.runtime import build_worker

    settings = settings_from(args)
    setup_logging(settings)
    worker, assembly = build_worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    log.info("worker for host %s on %s", settings.host, mask_url(settings.broker))
    # Everything built so far lives as long as the process: out of the collector's sight, a full collection
    # walks only what messages leave behind (it walked the whole start-up heap, ~5 µs per message amortised).
    gc.freeze()
    worker.run()
    assembly.close()
    return 0
