"""CPU usage without sleeping: each reading is the busy share since the previous one (``/proc/stat`` deltas).

The first baseline is taken when the sampler is built, so the first command already has a window. The state is
this object's own (psutil's ``cpu_percent(interval=None)`` keeps one baseline per process, which any other caller
would move).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Times = dict[str, tuple[int, int]]  # "cpu", "cpu0", ... → (busy jiffies, total jiffies)

# A window shorter than this holds too few jiffies to mean anything: the previous figures are returned instead.
MIN_WINDOW_S = 0.05


@dataclass(frozen=True)
class Usage:
    total: float | None
    per_cpu: list[float | None]
    window_s: float | None

    def as_dict(self) -> dict[str, object]:
        return {"total_percent": self.total, "per_cpu_percent": self.per_cpu, "window_s": self.window_s}


class CpuUsageSampler:
    def __init__(self, proc: Path = Path("/proc"), clock: Callable[[], float] = time.monotonic):
        self._stat = Path(proc) / "stat"
        self._clock = clock
        self._lock = threading.Lock()
        self._base: tuple[float, Times] | None = None
        self._last: Usage | None = None
        try:
            self._base = (clock(), self._sample())
        except OSError:
            self._base = None  # the tree is not there yet: the first read reports the average since boot

    def read(self) -> Usage:
        with self._lock:
            now, times = self._clock(), self._sample()
            if self._last is not None and self._base is not None and now - self._base[0] < MIN_WINDOW_S:
                return self._last
            base_at, base = self._base or (None, {})
            usage = _usage(base, times, None if base_at is None else round(now - base_at, 3))
            if usage.total is None:
                return self._last or usage  # not one jiffy passed: keep the baseline for a real window
            self._base, self._last = (now, times), usage
            return usage

    def _sample(self) -> Times:
        return dict(_parse_line(line) for line in self._stat.read_text().splitlines() if line.startswith("cpu"))


def _parse_line(line: str) -> tuple[str, tuple[int, int]]:
    name, *fields = line.split()
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values)
    return name, (total - idle, total)


def _usage(base: Times, now: Times, window: float | None) -> Usage:
    per_cpu = [_percent(base.get(name), now[name]) for name in sorted(now, key=_cpu_index) if name != "cpu"]
    return Usage(_percent(base.get("cpu"), now["cpu"]), per_cpu, window)


def _percent(before: tuple[int, int] | None, after: tuple[int, int]) -> float | None:
    busy0, total0 = before or (0, 0)
    busy, total = after[0] - busy0, after[1] - total0
    return round(100.0 * busy / total, 1) if total > 0 else None


def _cpu_index(name: str) -> int:
    return int(name[3:]) if name[3:].isdigit() else -1
