"""systemd's notify protocol (sd_notify(3)) for ``Type=notify`` units: READY, WATCHDOG, STOPPING, STATUS.

One datagram per notification to the socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the
abstract namespace). Outside systemd the variable is unset and every call does nothing. The watchdog is
armed only when systemd asks for it (``$WATCHDOG_USEC``, for this process when ``$WATCHDOG_PID`` is set)
and is fed at half that interval, as sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("kvmworker.systemd")


class Notifier:
    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._watchdog_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._clock = clock
        self._fed_at = float("-inf")
        self._lock = threading.Lock()
        self._ready = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two WATCHDOG=1, or None when systemd runs no watchdog for this process."""
        return self._watchdog_s if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when not under systemd or the send failed."""
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), self._address)
            return True
        except OSError as exc:  # systemd gone or the socket replaced: the service itself carries on
            log.warning("could not notify systemd at %s: %s", self._address.replace("\0", "@"), exc)
            return False

    def ready(self, status: str) -> None:
        """READY=1 the first time (the unit becomes active), STATUS= every time."""
        with self._lock:
            first, self._ready = not self._ready, True
        self.notify(*(("READY=1",) if first else ()), f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def alive(self) -> None:
        """The caller's loop made progress: feed the watchdog, at most once per half interval."""
        if self._watchdog_s is None or self._address is None:
            return
        now = self._clock()
        with self._lock:
            if now - self._fed_at < self._watchdog_s:
                return
            self._fed_at = now
        self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping: finishing the commands that run") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (e.g. inherited by a child)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
