"""What the journal costs per record: the store before group commit beside the store now, in the same run.

    .venv/bin/python bench/journal.py [--records 4000] [--rounds 5] [--before REF]

"Before" is ``kvmworker/journal/store.py`` as it was at ``--before`` (a git ref; the last version that
wrote each record in its own commit by default), loaded from ``git show`` into a module of its own.
Each round runs both stores on fresh files in alternation, so that drift (page cache, CPU frequency,
other load) hits both alike. Records come back to back (from 1 thread, or 16 at once), or paced as
messages reach a worker (500 or 2,000 a second: the journal's thread then has gaps to wake up in).
Per scenario it reports:

- call p50/p99: the time one call takes, what a worker's thread waits (``answered``: the read-only
  record; ``begin+finish``: a mutating command's claim and its reply, both committed on return);
- cpu: the process's CPU time per record, the writer's thread and the final commit included (paced:
  less the CPU of the pacing alone, measured in the same round);
- wall: elapsed time per record, from the first call until every record is committed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmworker.journal.entry import Received
from kvmworker.journal.store import ANSWERED, JournalStore

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "94c2ff51d1823f2bec0cfae9ea352f5c6d3c1af2"
REPLY = {"code": 0, "msg": "成功", "data": {"host": "kvt-bench", "hostname": "h", "version": "1.0", "uptime": 12.5}}


def old_store_class(ref: str) -> type:
    """``JournalStore`` as it was at ``ref``, imported under a module name of its own."""
    source = subprocess.run(
        ["git", "show", f"{ref}:kvmworker/journal/store.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="kvt-bench-")) / "journal_store_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("journal_store_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.JournalStore


def received() -> Received:
    """What the middleware hands over for a ``SystemHandler.ping``."""
    now, msg_id = time.time(), str(uuid.uuid4())
    delivery = {"received_at": now, "redelivered": False, "correlation_id": uuid.uuid4().hex, "answered": "executed"}
    return Received(
        msg_id=msg_id,
        received_at=now,
        host="kvt-bench",
        handler="SystemHandler",
        command="ping",
        dry_run=False,
        redelivered=False,
        envelope={"handler": "SystemHandler", "command": "ping", "data": {}, "msg_id": msg_id},
        properties={
            "content_type": "application/json",
            "message_id": msg_id,
            "correlation_id": delivery["correlation_id"],
            "reply_to": "amq.rabbitmq.reply-to.g1h2AA5yZXBseUA2NTQ5MjY4MAAAJp0AAAAAZfzeAg==",
            "headers": {"x-kvm-sent-at": now},
        },
        delivery={**delivery, "reply_to": "amq.rabbitmq.reply-to.g1h2AA5yZXBseUA2NTQ5MjY4MAAAJp0AAAAAZfzeAg=="},
    )


def answered(store: Any, r: Received) -> None:
    store.answered(r, REPLY, 0.0002)


def begin_finish(store: Any, r: Received) -> None:
    store.begin(r)
    store.finish(r.msg_id, ANSWERED, REPLY, 0.0002)


def nothing(store: Any, r: Received) -> None:
    """The pacing alone: its CPU is taken off the paced runs."""


@dataclass(frozen=True)
class Scenario:
    name: str
    case: Callable[[Any, Received], None]
    threads: int = 1
    rate: float | None = None
    """Calls per second per thread (as messages arrive at a worker), or None: back to back."""


SCENARIOS = (
    Scenario("answered", answered),
    Scenario("answered", answered, threads=16),
    Scenario("answered", answered, rate=2000),
    Scenario("answered", answered, rate=500),
    Scenario("begin+finish", begin_finish),
    Scenario("begin+finish", begin_finish, threads=16),
    Scenario("begin+finish", begin_finish, rate=500),
)


def measure(store_class: type, scenario: Scenario, records: int) -> dict[str, float]:
    """One run on a fresh file: call p50 and p99, CPU and wall per record."""
    store = store_class(Path(tempfile.mkdtemp(prefix="kvt-bench-")) / "journal.sqlite")
    threads = scenario.threads
    work = [[received() for _ in range(records // threads)] for _ in range(threads)]
    gap = 1 / scenario.rate if scenario.rate else 0.0
    calls: list[float] = []
    start = threading.Barrier(threads + 1)

    def caller(batch: list[Received]) -> None:
        mine = []
        start.wait()
        for r in batch:
            began = time.perf_counter()
            scenario.case(store, r)
            mine.append(time.perf_counter() - began)
            if gap:
                time.sleep(max(0.0, gap - (time.perf_counter() - began)))
        calls.extend(mine)

    pool = [threading.Thread(target=caller, args=(batch,)) for batch in work]
    for thread in pool:
        thread.start()
    cpu, wall = time.process_time(), time.perf_counter()
    start.wait()
    for thread in pool:
        thread.join()
    getattr(store, "flush", lambda: None)()  # every record committed (before: each one was, on return)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    store.close()
    done = threads * (records // threads)
    calls.sort()
    return {"p50": calls[len(calls) // 2], "p99": calls[len(calls) * 99 // 100], "cpu": cpu / done, "wall": wall / done}


def label(scenario: Scenario) -> str:
    how = f"{scenario.rate:.0f}/s" if scenario.rate else "back to back"
    return f"{scenario.name}, {scenario.threads} thread{'s' if scenario.threads > 1 else ''}, {how}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=4000, help="records per back-to-back run (paced: a quarter)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default=BEFORE, help="git ref of the store to compare with")
    args = parser.parse_args()
    stores = {"before": old_store_class(args.before), "after": JournalStore}
    runs: dict[tuple[Scenario, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for scenario in SCENARIOS:
            records = args.records // 4 if scenario.rate else args.records
            if scenario.rate:  # the CPU of pacing alone, in the same round, to take off
                idle = measure(JournalStore, Scenario("idle", nothing, rate=scenario.rate), records)["cpu"]
            for store_name, store_class in stores.items():
                result = measure(store_class, scenario, records)
                if scenario.rate:
                    result["cpu"] -= idle
                runs.setdefault((scenario, store_name), []).append(result)
    print(
        f"µs per record, median of {args.rounds} rounds; before = the store at {args.before[:12]}, ratio = after/before"
    )
    columns = ("p50", "p99", "cpu", "wall")
    print(f"{'':<42}{'store':<7}{'call p50':>9}{'call p99':>9}{'cpu':>9}{'wall':>9}")
    for scenario in SCENARIOS:
        medians = {}
        for store_name in stores:
            results = runs[(scenario, store_name)]
            medians[store_name] = {k: statistics.median(r[k] for r in results) * 1e6 for k in columns}
            cells = "".join(f"{medians[store_name][k]:9.1f}" for k in columns)
            print(f"{label(scenario) if store_name == 'before' else '':<42}{store_name:<7}{cells}")
        cells = "".join(f"{medians['after'][k] / medians['before'][k]:9.2f}" for k in columns)
        print(f"{'':<42}{'ratio':<7}{cells}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
