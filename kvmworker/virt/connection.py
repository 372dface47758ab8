"""One long-lived libvirt connection per worker: opened lazily, kept alive, reopened after it breaks.

libvirt's client is thread-safe, so one ``virConnect`` serves every command thread. A broken
connection is noticed three ways: the close callback (daemon gone, socket EOF), keepalive (daemon
hung: no answer for ``interval * count`` seconds) and ``isAlive()`` after a failed call.

Watchers (the VM event source) hear of every connection and of every outage: ``attach`` runs on each new
connection before anyone else can use it, after the lifecycle callback was registered on it (on every
connection, so events do not silently stop after a reconnection); ``up``/``down`` once per change of
availability. ``keep_open()`` reconnects in the background after an outage instead of waiting for the
next command, so events resume by themselves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import libvirt

from kvmworker.protocol.errors import HypervisorUnavailable
from kvmworker.protocol.urls import mask_secrets, mask_url
from kvmworker.virt.events import LifecycleEvents

log = logging.getLogger("kvmworker.virt")

# libvirt accepts one event implementation per process, registered before the first connection is
# opened; this guard is the process-wide fact, not configuration, hence module state.
_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None

# An idle connection sends a ping every interval (two wake-ups: the ping, the answer); libvirt drops it after
# ``count`` pings unanswered, ``(count + 1) * interval`` after the daemon last said anything: 15 s for a hung
# libvirtd, at one ping every 5 s (2 s × 3 was 8 s, at a ping every 2 s). A daemon that is gone is noticed at
# once either way (the close callback).
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 2


def ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and drive it from a daemon thread."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr by default; ours are raised as exceptions instead.
        libvirt.registerErrorHandler(_ignore_error, None)
        _loop_thread = threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True)
        _loop_thread.start()


def _ignore_error(opaque: object, error: object) -> None:
    return None


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class ConnectionWatcher(Protocol):
    def attach(self, conn: libvirt.virConnect) -> None:
        """A new connection, its lifecycle callback registered, not yet handed out: read what you need from it.

        Runs under the connection's lock: use ``conn`` only (``open()`` would wait forever). A libvirt error
        here fails this connection attempt."""

    def up(self, recovered: bool) -> None:
        """libvirt is reachable; ``recovered``: after an outage (events may have been missed meanwhile)."""

    def down(self, detail: str) -> None:
        """libvirt became unreachable (once per outage)."""


class LibvirtConnection:
    """The worker's connection to ``uri``; ``open()`` gives a live ``virConnect`` or raises 30009."""

    def __init__(
        self,
        uri: str,
        *,
        open_timeout: float = 5.0,
        keepalive_interval: int = KEEPALIVE_INTERVAL_S,
        keepalive_count: int = KEEPALIVE_COUNT,
        events: LifecycleEvents | None = None,
    ):
        self.uri = uri
        self.events = events or LifecycleEvents()
        self._open_timeout = open_timeout
        self._keepalive = (keepalive_interval, keepalive_count)
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._watchers: list[ConnectionWatcher] = []
        self._available: bool | None = None  # None: never tried
        self._availability_lock = threading.RLock()
        self._keeper: _Keeper | None = None

    def watch(self, watcher: ConnectionWatcher) -> None:
        """``watcher`` hears of every connection from now on; add watchers before the first ``open()``."""
        self._watchers.append(watcher)

    def keep_open(self, max_retry: float = 5.0) -> None:
        """Connect now in the background and reconnect after every outage, without waiting for a command."""
        with self._lock:
            if self._keeper is None:
                self._keeper = _Keeper(self, max_retry)
                self._keeper.start()

    def open(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is not None and _alive(conn):
            return conn
        with self._lock:
            conn = self._conn
            if conn is not None and _alive(conn):
                return conn
            found_dead = conn is not None  # broken before its close callback said so
            self._discard()
            try:
                self._conn = conn = self._connect()
            except HypervisorUnavailable as exc:
                failed: HypervisorUnavailable | None = exc
            else:
                failed = None
        # Watchers hear of it outside the lock: they may call back into open() (a sync takes the picture).
        if found_dead:
            self._set_available(False, "connection found broken")
        if failed is not None:
            self._set_available(False, failed.detail)
            raise failed
        self._set_available(True)
        return conn

    @contextmanager
    def session(self) -> Iterator[libvirt.virConnect]:
        """The connection, with a failure of the connection itself (not of the call) turned into 30009."""
        conn = self.open()
        try:
            yield conn
        except libvirt.libvirtError as exc:
            if not _alive(conn):
                self._forget(conn)
                raise HypervisorUnavailable(f"lost the connection to {mask_url(self.uri)}: {_message(exc)}") from None
            raise

    @property
    def local(self) -> bool:
        """A driver inside this process (``test://``): nothing there hangs, and a second connection is another host."""
        return self.uri.startswith("test:")

    def open_extra(self) -> libvirt.virConnect:
        """Another connection to the same daemon, for calls that may hang (kept off the worker's own, see
        ``virt/stats.py``); bounded and kept alive as the worker's, without events or watchers. The caller closes it."""
        ensure_event_loop()
        conn = _open_within(self.uri, self._open_timeout)
        with suppress(libvirt.libvirtError):
            conn.setKeepAlive(*self._keepalive)
        return conn

    def version(self) -> dict[str, Any]:
        with self.session() as conn:
            return {
                "available": True,
                "uri": mask_url(self.uri),
                "library": _dotted(libvirt.getVersion()),
                "daemon": _dotted(conn.getLibVersion()),
                "hypervisor": f"{conn.getType()} {_dotted(conn.getVersion())}",
            }

    def close(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.stop()
        with self._lock:
            self._discard()

    def _connect(self) -> libvirt.virConnect:
        ensure_event_loop()
        conn = _open_within(self.uri, self._open_timeout)
        # Local drivers (test://) have no keepalive: nothing there can hang.
        with suppress(libvirt.libvirtError):
            conn.setKeepAlive(*self._keepalive)
        conn.registerCloseCallback(self._on_close, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self.events.on_event, None)
        try:
            for watcher in self._watchers:
                watcher.attach(conn)
        except libvirt.libvirtError as exc:
            _close_quietly(conn)
            raise HypervisorUnavailable(f"connected to {mask_url(self.uri)} but: {_message(exc)}") from None
        log.info("connected to %s", mask_url(self.uri))
        return conn

    def _on_close(self, conn: libvirt.virConnect, reason: int, opaque: object) -> None:
        detail = f"connection closed: {_CLOSE_REASONS.get(reason, reason)}"
        log.warning("libvirt %s: %s", mask_url(self.uri), detail)
        self._forget(conn, detail)

    def _forget(self, conn: libvirt.virConnect, detail: str = "connection lost") -> None:
        # Runs on the event loop thread too: no lock, just stop handing this connection out.
        if self._conn is conn:
            self._conn = None
            self._set_available(False, detail)
        self.events.interrupt_all()

    def _set_available(self, available: bool, detail: str = "") -> None:
        """Tell the watchers once per change; the keeper is woken by an outage to reconnect."""
        # Held while notifying, so that watchers hear down/up in the order they happened; reentrant, because
        # a watcher may call open() again.
        with self._availability_lock:
            before, self._available = self._available, available
            if available and before is not True:
                for watcher in self._watchers:
                    _notify(watcher.up, before is False)
            elif not available and before is not False:
                for watcher in self._watchers:
                    _notify(watcher.down, detail)
        keeper = self._keeper
        if not available and keeper is not None:
            keeper.wake()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        _close_quietly(conn)


_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "end of file (libvirtd gone)",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout (libvirtd not answering)",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by the client",
}


def _notify(hook, *args: object) -> None:
    # A watcher's failure must not break the connection that every command shares.
    try:
        hook(*args)
    except Exception:
        log.exception("libvirt connection watcher %s failed", getattr(hook, "__qualname__", hook))


class _Keeper:
    """Reconnects while libvirt is unreachable: a thread that runs from an outage (or ``keep_open``) until
    connected, retrying with backoff, and then ends; a worker connected to libvirt has no such thread."""

    def __init__(self, connection: LibvirtConnection, max_retry: float):
        self._connection = connection
        self._max_retry = max_retry
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False  # an outage told to the running thread: it tries once more before it ends
        self._stopping = threading.Event()

    def start(self) -> None:
        self.wake()

    def wake(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            if self._thread is not None:
                self._again = True
                return
            self._thread = threading.Thread(target=self._run, name="libvirt-keeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    def _run(self) -> None:
        retry = 0.5
        while not self._stopping.is_set():
            with self._lock:
                self._again = False  # before open(): an outage from now on makes this thread try again
            try:
                self._connection.open()
            except HypervisorUnavailable:
                self._stopping.wait(retry)
                retry = min(retry * 2, self._max_retry)
                continue
            retry = 0.5
            with self._lock:
                if not self._again:
                    self._thread = None
                    return


def _open_within(uri: str, timeout: float) -> libvirt.virConnect:
    """``libvirt.open`` bounded in time: a daemon that accepts but never answers must not hang a command."""
    attempt = _OpenAttempt(uri)
    threading.Thread(target=attempt.run, name="libvirt-open", daemon=True).start()
    return attempt.result(timeout)


class _OpenAttempt:
    """One ``libvirt.open`` in its own thread; a connection that arrives after the caller gave up is closed."""

    def __init__(self, uri: str):
        self.uri = uri
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self._conn: libvirt.virConnect | None = None
        self._error: libvirt.libvirtError | None = None

    def run(self) -> None:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            self._error = exc
            conn = None
        with self._lock:
            self._conn = conn
            self._done.set()
            abandoned = self._abandoned
        if abandoned:
            _close_quietly(conn)

    def result(self, timeout: float) -> libvirt.virConnect:
        self._done.wait(timeout)
        with self._lock:
            if not self._done.is_set():
                self._abandoned = True
                raise HypervisorUnavailable(f"no answer from {mask_url(self.uri)} within {timeout:g} s")
        if self._error is not None:
            raise HypervisorUnavailable(f"cannot connect to {mask_url(self.uri)}: {_message(self._error)}")
        return self._conn


def _close_quietly(conn: libvirt.virConnect | None) -> None:
    # Broken or abandoned: closing only frees it, so its failure changes nothing.
    if conn is not None:
        with suppress(libvirt.libvirtError):
            conn.close()


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _message(exc: libvirt.libvirtError) -> str:
    return mask_secrets(exc.get_error_message() or str(exc))  # libvirt quotes the URI it failed on


def _dotted(version: int) -> str:
    return f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
