"""What a process costs, read from /proc: CPU time (all its threads), resident memory, thread count.

CPU comes from two places. ``/proc/<pid>/stat`` (utime + stime, plus cutime + cstime of children it has
waited for) counts every thread, even those that have exited, but only in clock ticks (10 ms here): right
for a loaded run. ``/proc/<pid>/task/*/schedstat`` counts nanoseconds per living thread: right for an idle
window, where 0.1% of a core over 10 s is a single tick. ``CpuMeter`` uses the nanoseconds when no thread
went away during the window, the ticks otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_ticks_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``, in seconds (every thread, living or not)."""
    # the command name (field 2) may hold spaces: the fields after it start behind the last ')'
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) * TICK_S


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU so far, per living thread of ``pid``."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we looked
    return found


def status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (kB) and ``Threads`` of ``pid``."""
    wanted = {"VmRSS", "VmHWM", "Threads"}
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            values[name] = int(rest.split()[0])
    return values


@dataclass
class CpuMeter:
    """CPU seconds ``pid`` used between ``start()`` and ``stop()``, and the wall time between them."""

    pid: int
    _ticks: float = 0.0
    _threads: dict[int, int] | None = None
    _wall: float = 0.0

    def start(self) -> CpuMeter:
        self._ticks, self._threads, self._wall = cpu_ticks_s(self.pid), thread_cpu_ns(self.pid), time.monotonic()
        return self

    def stop(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since ``start()``."""
        wall = time.monotonic() - self._wall
        ticks, threads = cpu_ticks_s(self.pid) - self._ticks, thread_cpu_ns(self.pid)
        if not set(self._threads) <= set(threads):
            return ticks, wall  # a thread ended: its nanoseconds are gone, the ticks still have them
        used = sum(ns - self._threads.get(tid, 0) for tid, ns in threads.items())
        return used / 1e9, wall
