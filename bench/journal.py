"""What the journal costs per record: the store before group commit beside the store now, in the same run.

    .venv/bin/python bench/journal.py [--records 4000] [--rounds 5] [--before REF]

"Before" is ``kvmworker/journal/store.py`` as it was at ``--before`` (a git ref; the last version that
wrote each record in its own commit by default), loaded from ``git show`` into a module of its own.
Each round runs both stores on fresh files in alternation, so that drift (page cache, CPU frequency,
other load) hits both alike. Per case and thread count it reports:

- call: the median time one call takes, what a worker's thread waits (``answered``: the read-only
  record; ``begin+finish``: a mutating command's claim and its reply, both committed on return);
- cpu: the process's CPU time per record, the writer's thread and the final commit included;
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


def measure(store_class: type, case: Callable[[Any, Received], None], records: int, threads: int) -> dict[str, float]:
    """One run on a fresh file: median call, CPU and wall per record."""
    store = store_class(Path(tempfile.mkdtemp(prefix="kvt-bench-")) / "journal.sqlite")
    work = [[received() for _ in range(records // threads)] for _ in range(threads)]
    calls: list[float] = []
    start = threading.Barrier(threads + 1)

    def caller(batch: list[Received]) -> None:
        mine = []
        start.wait()
        for r in batch:
            began = time.perf_counter()
            case(store, r)
            mine.append(time.perf_counter() - began)
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
    return {"call": statistics.median(calls), "cpu": cpu / done, "wall": wall / done}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=4000, help="records per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default=BEFORE, help="git ref of the store to compare with")
    args = parser.parse_args()
    stores = {"before": old_store_class(args.before), "after": JournalStore}
    cases = {"answered": answered, "begin+finish": begin_finish}
    runs: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for case_name, case in cases.items():
            for threads in (1, 16):
                for store_name, store_class in stores.items():
                    runs.setdefault((case_name, threads, store_name), []).append(
                        measure(store_class, case, args.records, threads)
                    )
    print(f"{args.records} records per run, median of {args.rounds} rounds; before = {args.before[:12]}")
    print(f"{'case':<14}{'threads':>8}  {'':<7}{'call µs':>9}{'cpu µs':>9}{'wall µs':>9}")
    for case_name in cases:
        for threads in (1, 16):
            medians = {}
            for store_name in stores:
                results = runs[(case_name, threads, store_name)]
                medians[store_name] = {k: statistics.median(r[k] for r in results) * 1e6 for k in results[0]}
                m = medians[store_name]
                print(f"{case_name:<14}{threads:>8}  {store_name:<7}{m['call']:9.1f}{m['cpu']:9.1f}{m['wall']:9.1f}")
            ratio = {k: medians["after"][k] / medians["before"][k] for k in medians["after"]}
            print(f"{'':<22}{'ratio':<7}{ratio['call']:9.2f}{ratio['cpu']:9.2f}{ratio['wall']:9.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
