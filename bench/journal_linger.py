"""The journal's linger (``writer.LINGER_S``) at a worker's rates: CPU per read-only record, two lingers in turns.

    .venv/bin/python bench/journal_linger.py [--rates 1000 2500] [--runs 6] [--lingers 0.005 0.02]

Records come paced (``--rate`` a second, one second each run), as read-only commands reach a worker one by one;
after each group the journal's thread waits ``LINGER_S`` for more to share the next commit and wake-up. Each run
is a fresh file; the lingers take turns (the first alternates) in one process, so that load on this shared
machine hits both alike. Reported: the process's CPU per record, median and best of the runs, the pacing's
own CPU included (the same for both).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kvmworker.journal import writer
from kvmworker.journal.entry import Received
from kvmworker.journal.store import JournalStore

REPLY = {"code": 0, "msg": "成功", "data": {"host": "kvt-bench", "uptime": 12.5}}
ENVELOPE = {"handler": "SystemHandler", "command": "ping", "data": {}}


def record(msg_id: str, now: float) -> Received:
    delivery = {"received_at": now, "answered": "executed"}
    return Received(
        msg_id, now, "kvt-bench", "SystemHandler", "ping", False, False, ENVELOPE, {"headers": {}}, delivery
    )


def run(rate: int) -> float:
    """CPU µs per record for one second of records at ``rate``."""
    with tempfile.TemporaryDirectory(prefix="kvt-bench-linger-") as state:
        store = JournalStore(Path(state) / "journal.sqlite", remember_ids=True)
        store.answered(record("kvt-warm", time.time()), REPLY, 0.001)
        store.flush()
        gap, cpu, start = 1.0 / rate, time.process_time(), time.monotonic()
        for i in range(rate):
            store.answered(record(str(uuid.uuid4()), time.time()), REPLY, 0.001)
            while (rest := start + (i + 1) * gap - time.monotonic()) > 0:
                time.sleep(rest)
        store.flush()
        per = (time.process_time() - cpu) / rate * 1e6
        store.close()
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 2500])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--lingers", type=float, nargs=2, default=[0.005, 0.02])
    args = parser.parse_args()
    for rate in args.rates:
        found: dict[float, list[float]] = {linger: [] for linger in args.lingers}
        for n in range(args.runs):
            for linger in args.lingers if n % 2 else reversed(args.lingers):
                writer.LINGER_S = linger
                found[linger].append(run(rate))
        for linger, cpu in found.items():
            print(
                f"{rate}/s, linger {linger * 1000:g} ms: {statistics.median(cpu):.1f} µs CPU per record (median), "
                f"{min(cpu):.1f} best, of {args.runs}"
            )


if __name__ == "__main__":
    main()
