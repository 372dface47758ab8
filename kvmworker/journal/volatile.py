"""The reply fields that change on every run of the same command (uptime, timestamps, durations): replay
ignores them by default. No imports: ``kvmworker replay --help`` reads this."""

from __future__ import annotations

VOLATILE_FIELDS: tuple[str, ...] = (
    "uptime",
    "uptime_s",
    "*_at",
    "timestamp",
    "ts",
    "time",
    "now",
    "duration",
    "duration_*",
    "elapsed",
    "elapsed_*",
    "took_ms",
    "late_s",
)
"""Key names ignored by default at any depth: they differ on every call (``--no-default-ignore`` compares them)."""
