"""Live migration of one VM to another host, followed, bounded in time, cancellable; ends with the VM on one host.

The job is libvirt's peer-to-peer migration (``migrateToURI3``), run on a thread of its own; the command's thread
watches it through ``jobStats()`` every ``POLL_S``: progress (§8) from the memory still to send, an abort
(``abortJob``) when the caller cancels, when the whole migration outlasts its timeout (800 s per GiB of RAM, at
least 120 s, as nova's ``live_migration_completion_timeout``) or when the memory left to send has not shrunk for
``progress_timeout`` seconds (nova's ``live_migration_progress_timeout``, VDSM's stall detector, KubeVirt's
``progressTimeout``). With ``postcopy`` a pre-copy that stalls or outlasts its timeout is switched to post-copy
once instead of aborted (nova's ``live_migration_timeout_action = force_complete``, KubeVirt's ``allowPostCopy``,
which switch when the completion timeout triggers); from then on nothing aborts it (post-copy cannot go back).

Peers read: openstack/nova ``nova/virt/libvirt/driver.py`` (``_live_migration_monitor``, the completion timeout
per GiB, the progress timeout, ``abortJob``) and its ``live_migration_timeout_action`` release note;
kubevirt/user-guide ``docs/operations/live_migration.md`` and KubeVirt's ``MigrationConfiguration``
(``completionTimeoutPerGiB``, ``progressTimeout``, ``allowPostCopy``).

Whatever happened, ``settle`` then checks the one invariant: **the VM runs on exactly one host**. The source is
authoritative until libvirt says the job completed: after a failure, a timeout or a cancel, whatever the job left
on the destination (a paused or defined domain) is destroyed and undefined there through the destination's libvirt,
and the reply says so (``cleaned``). A domain that already existed on the destination before the migration is never
touched (the migration is refused before it starts). Only when the source no longer runs the VM and the
destination does is the migration a success, even if the job reported an error (an abort that came too late).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import libvirt

from kvmworker.api.vm import MigrateData
from kvmworker.protocol.errors import (
    Cancelled,
    HypervisorUnavailable,
    InvalidParameter,
    MigrationFailed,
    OperationNotAllowed,
)
from kvmworker.protocol.urls import mask_url
from kvmworker.virt.connection import _open_within
from kvmworker.virt.domains import find_by_name, find_by_uuid
from kvmworker.virt.states import state_name

log = logging.getLogger("kvmworker.migration")

POLL_S = 0.5
OPEN_TIMEOUT_S = 30.0
JOIN_AFTER_ABORT_S = 60.0
"""How long the job's thread gets to end after ``abortJob`` before the worker stops waiting for it."""
MIN_TIMEOUT_S = 120.0
TIMEOUT_PER_GIB_S = 800.0
GIB_KIB = 1024 * 1024


def default_timeout(memory_kib: int) -> float:
    return max(MIN_TIMEOUT_S, TIMEOUT_PER_GIB_S * memory_kib / GIB_KIB)


def flags_of(data: MigrateData) -> int:
    flags = libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    if data.live:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if data.persistent:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if data.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if data.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    return flags


@dataclass
class Templates:
    """``--migration-uri`` and ``--migration-data-uri``: ``{host}`` is the destination's (validated) host name."""

    uri: str
    data_uri: str | None = None

    def destination(self, host: str) -> str:
        return self.uri.format(host=host)

    def params(self, host: str, data: MigrateData) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.data_uri is not None:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = self.data_uri.format(host=host)
        if data.bandwidth_mib is not None:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = data.bandwidth_mib
        return params


@dataclass
class Watch:
    """What the monitor saw: the last job statistics, and why it aborted the job (None: it did not)."""

    started: float = field(default_factory=time.monotonic)
    stats: dict[str, Any] = field(default_factory=dict)
    aborted: str | None = None
    postcopy: bool = False
    best_remaining: int | None = None
    progressed_at: float = field(default_factory=time.monotonic)

    def saw(self, stats: dict[str, Any], now: float) -> None:
        if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return
        self.stats = stats
        remaining = stats.get("memory_remaining", stats.get("data_remaining"))
        if remaining is None:
            return
        if self.best_remaining is None or remaining < self.best_remaining:
            self.best_remaining = remaining
            self.progressed_at = now


def percent_and_phase(stats: dict[str, Any]) -> tuple[float | None, str]:
    total = stats.get("memory_total") or stats.get("data_total")
    remaining = stats.get("memory_remaining", stats.get("data_remaining"))
    if not total or remaining is None:
        return None, "setup"
    percent = round(100.0 * (total - remaining) / total, 1)
    if remaining == 0:
        return 99.0 if percent >= 99.0 else percent, "completing"
    return min(percent, 99.0), "memory"


class Migrations:
    """The worker's outgoing migrations: at most ``max_migrations`` at once (the others wait their turn)."""

    def __init__(self, host: str, templates: Templates, max_migrations: int, progress_timeout: float):
        self.host = host
        self.templates = templates
        self.progress_timeout = progress_timeout
        self._slots = threading.BoundedSemaphore(max_migrations)

    @contextmanager
    def turn(self, ctx: Any, name: str) -> Iterator[None]:
        """A slot, waited for with phase ``waiting`` (seen in ``operations``); a cancel meanwhile is 30013."""
        if not self._slots.acquire(blocking=False):
            ctx.progress(None, f"waiting: all outgoing migrations busy; {name} waits its turn")
            woken = threading.Event()
            with ctx.on_cancel(woken.set):
                while not self._slots.acquire(timeout=POLL_S):
                    if ctx.cancelled:
                        raise Cancelled(f"cancelled while {name} waited for its turn; nothing was done")
        try:
            yield
        finally:
            self._slots.release()

    def check(self, dom: libvirt.virDomain, data: MigrateData) -> None:
        """What a dry run checks too: a running VM, another host."""
        if data.destination == self.host:
            raise InvalidParameter(f"{data.destination} is this host", field="destination")
        if not dom.isActive():
            raise OperationNotAllowed(f"{dom.name()} is not running: only a running VM is migrated")

    def steps(self, dom: libvirt.virDomain, data: MigrateData) -> list[str]:
        self.check(dom, data)
        how = "live" if data.live else "paused"
        return [
            f"migrate {dom.name()} ({how}, peer to peer) to {data.destination} at "
            f"{mask_url(self.templates.destination(data.destination))}",
            "undefine it here once it runs there" if data.persistent else "keep its definition here",
        ]

    def migrate(
        self,
        dom: libvirt.virDomain,
        data: MigrateData,
        ctx: Any,
        opener: Callable[[], libvirt.virConnect] | None = None,
    ) -> dict[str, Any]:
        """``opener``: a connection of the job's own to this host's libvirt (see ``Job``); None: the job runs on
        ``dom``'s connection (a local driver)."""
        name, uuid = dom.name(), dom.UUIDString()
        self.check(dom, data)
        with self.turn(ctx, name):
            ctx.raise_if_cancelled(f"cancelled before {name} left; it runs here as before")
            dest = self.open_destination(data.destination)
            try:
                if find_by_uuid(dest, uuid) is not None or find_by_name(dest, name) is not None:
                    raise MigrationFailed(
                        f"{data.destination} already has a VM {name} ({uuid}); nothing was done",
                        extra={"reason": "exists on destination", "cleaned": []},
                    )
                return self._run(dom, dest, data, ctx, opener)
            finally:
                with suppress(libvirt.libvirtError):
                    dest.close()

    def open_destination(self, host: str) -> libvirt.virConnect:
        uri = self.templates.destination(host)
        try:
            return _open_within(uri, OPEN_TIMEOUT_S)
        except HypervisorUnavailable as exc:
            raise MigrationFailed(
                f"cannot reach {host}'s libvirt: {exc.detail}; nothing was done",
                extra={"reason": "destination unreachable", "cleaned": []},
            ) from None

    def _run(
        self,
        dom: libvirt.virDomain,
        dest: libvirt.virConnect,
        data: MigrateData,
        ctx: Any,
        opener: Callable[[], libvirt.virConnect] | None,
    ) -> dict[str, Any]:
        name = dom.name()
        timeout = data.timeout or default_timeout(dom.maxMemory())
        job = Job(dom, self.templates.destination(data.destination), self.templates.params(data.destination, data))
        if opener is not None:
            job.own_connection(opener())  # before anything started: an unreachable libvirt is 30009, nothing done
        ctx.progress(0.0, f"setup: migrating {name} to {data.destination}")
        job.start(flags_of(data))
        watch = self._follow(job, dom, data, ctx, timeout)
        duration = time.monotonic() - watch.started
        outcome = settle(dom, dest, job.error)
        if outcome.on == "destination":
            ctx.progress(100.0, f"done: {name} runs on {data.destination}")
            return {
                "name": name,
                "uuid": dom.UUIDString(),
                "destination": data.destination,
                "downtime_ms": outcome.stats.get("downtime", watch.stats.get("downtime")),
                "duration_s": round(duration, 3),
                "transferred_bytes": outcome.stats.get("data_processed", watch.stats.get("data_processed")),
                "postcopy": watch.postcopy,
            }
        extra = {"reason": watch.aborted or "failed", "cleaned": outcome.cleaned, "state": outcome.source_state}
        if outcome.on == "nowhere":
            extra["reason"] = f"{extra['reason']}; the VM runs on neither host"
        job_error = job.error.get_error_message() if job.error is not None else "no error from libvirt"
        if watch.aborted == "cancelled":
            raise Cancelled(f"cancelled: {name} was not migrated and runs here only ({job_error})", extra=extra)
        raise MigrationFailed(f"{name} was not migrated to {data.destination}: {job_error}", extra=extra)

    def _follow(self, job: Job, dom: libvirt.virDomain, data: MigrateData, ctx: Any, timeout: float) -> Watch:
        watch = Watch()
        downtime_set = data.max_downtime_ms is None
        woken = job.woken  # the job's end and a cancel both end a wait at once
        with ctx.on_cancel(woken.set):
            while not job.done.is_set():
                woken.wait(POLL_S)
                woken.clear()  # a cancel stays in ctx.cancelled
                if job.done.is_set():
                    break
                now = time.monotonic()
                stats = _job_stats(dom)
                watch.saw(stats, now)
                if watch.stats and not downtime_set:
                    downtime_set = _set_downtime(dom, data.max_downtime_ms)
                percent, phase = percent_and_phase(watch.stats)
                ctx.progress(percent, f"{phase}: {_remaining(watch.stats)} to {data.destination}")
                why = self._abort_reason(watch, ctx, now, timeout)
                if why is not None and why != "cancelled" and data.postcopy and not watch.postcopy:
                    watch.postcopy = _start_postcopy(dom)
                    watch.progressed_at = now
                    continue
                if why is not None:
                    watch.aborted = why
                    log.warning("aborting the migration of %s: %s", dom.name(), why)
                    ctx.progress(percent, f"aborting: {why}")
                    job.abort()
                    break
        job.done.wait(JOIN_AFTER_ABORT_S)
        return watch

    def _abort_reason(self, watch: Watch, ctx: Any, now: float, timeout: float) -> str | None:
        if watch.postcopy:  # past the point of no return: post-copy cannot be aborted, only finished
            return None
        if ctx.cancelled:
            return "cancelled"
        if now - watch.started > timeout:
            return f"timeout: not done in {timeout:g} s"
        if now - watch.progressed_at > self.progress_timeout:
            return "no progress"
        return None


class Job:
    """``migrateToURI3`` on a thread of its own; ``done`` once it returned, ``error`` what it raised.

    Given a connection of its own, the job runs over it (and closes it once the call returned): the call lasts
    the whole migration, and libvirt 9.0's client can lose the wake-up of another call made meanwhile on the same
    connection (it then waits for the next keepalive, 5 s), so the monitor's ``jobStats``/``abortJob`` and every
    other command stay on the worker's connection, which never carries a long call."""

    def __init__(self, dom: libvirt.virDomain, uri: str, params: dict[str, Any]):
        self.dom, self.uri, self.params = dom, uri, params
        self.done = threading.Event()
        self.woken = threading.Event()
        self.error: libvirt.libvirtError | None = None
        self._conn: libvirt.virConnect | None = None

    def own_connection(self, conn: libvirt.virConnect) -> None:
        self._conn = conn

    def start(self, flags: int) -> None:
        threading.Thread(target=self._run, args=(flags,), name=f"migrate-{self.dom.name()}", daemon=True).start()

    def _run(self, flags: int) -> None:
        try:
            dom = self.dom if self._conn is None else self._conn.lookupByUUIDString(self.dom.UUIDString())
            dom.migrateToURI3(self.uri, self.params, flags)
        except libvirt.libvirtError as exc:
            self.error = exc
        finally:
            if self._conn is not None:
                with suppress(libvirt.libvirtError):
                    self._conn.close()
            self.done.set()
            self.woken.set()

    def abort(self) -> None:
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as exc:  # no job any more (it just ended), or past the point of no return
            log.info("abortJob on %s: %s", self.dom.name(), exc.get_error_message())


@dataclass
class Outcome:
    on: str
    """``destination``, ``source`` or ``nowhere``: where the VM runs now."""
    cleaned: list[str] = field(default_factory=list)
    source_state: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def settle(src: libvirt.virDomain, dest: libvirt.virConnect, error: libvirt.libvirtError | None) -> Outcome:
    """The invariant, enforced: where the VM runs, and on a failure the destination cleaned of what the job left."""
    uuid = src.UUIDString()
    source_state = _state(src)
    there = find_by_uuid(dest, uuid)
    dest_active = there is not None and there.isActive()
    if dest_active and source_state in (None, "shutoff") and _running(there):
        return Outcome("destination", source_state=source_state, stats=_completed_stats(there))
    cleaned = _clean(there) if there is not None and source_state not in (None, "shutoff") else []
    if source_state in (None, "shutoff"):
        return Outcome("nowhere", cleaned, source_state)
    if error is None:  # libvirt said done, yet the destination does not run it: the source stays authoritative
        log.error("migration of %s reported success but it does not run on the destination", src.name())
    return Outcome("source", cleaned, source_state)


def _running(dom: libvirt.virDomain) -> bool:
    """Running (post-copy's end included), not the paused leftover of an aborted incoming migration."""
    state, reason = dom.state()
    return state == libvirt.VIR_DOMAIN_RUNNING or (
        state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY
    )


def _clean(dom: libvirt.virDomain) -> list[str]:
    """The destination's copy of a migration that failed: destroyed and undefined; what was done, in words."""
    cleaned: list[str] = []
    with suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
            cleaned.append("destroyed on the destination")
    with suppress(libvirt.libvirtError):
        if dom.isPersistent():
            dom.undefine()
            cleaned.append("undefined on the destination")
    return cleaned


def _state(dom: libvirt.virDomain) -> str | None:
    """The source domain's state, or None when it is gone (undefined by a completed persistent migration)."""
    try:
        return state_name(dom.state()[0])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _job_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    try:
        return dom.jobStats()
    except libvirt.libvirtError:
        return {}


def _completed_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    """The destination keeps the statistics of the incoming migration it completed (downtime included)."""
    try:
        # KEEP_COMPLETED: reading them must not take them away from the operator's `virsh domjobinfo --completed`.
        return dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
    except libvirt.libvirtError:
        return {}


def _set_downtime(dom: libvirt.virDomain, downtime_ms: int | None) -> bool:
    try:
        dom.migrateSetMaxDowntime(downtime_ms or 0, 0)
    except libvirt.libvirtError as exc:
        log.info("migrateSetMaxDowntime on %s: %s", dom.name(), exc.get_error_message())
        return False
    return True


def _start_postcopy(dom: libvirt.virDomain) -> bool:
    try:
        dom.migrateStartPostCopy(0)
    except libvirt.libvirtError as exc:
        log.warning("migrateStartPostCopy on %s: %s", dom.name(), exc.get_error_message())
        return False
    log.warning("migration of %s stalled: switched to post-copy", dom.name())
    return True


def _remaining(stats: dict[str, Any]) -> str:
    remaining = stats.get("memory_remaining", stats.get("data_remaining"))
    return "starting" if remaining is None else f"{remaining / (1024 * 1024):.1f} MiB left"


# -- a worker killed mid-migration ------------------------------------------------------------------------------

INTERRUPTED_REASON = "interrupted"


def recover(dom: libvirt.virDomain | None, dest: libvirt.virConnect, data: MigrateData, uuid: str | None) -> dict:
    """The reply of a ``migrate`` whose worker was killed while it ran, from what libvirt says now.

    Its job may still be running in libvirtd (a peer-to-peer migration goes on without its caller): it is aborted
    and waited for, then the invariant is settled as after any failure. The reply is a success when the VM runs on
    the destination only (the job completed before the worker came back), else 30012 with reason ``interrupted``.
    """
    if dom is not None and _has_job(dom):
        with suppress(libvirt.libvirtError):
            dom.abortJob()
        deadline = time.monotonic() + JOIN_AFTER_ABORT_S
        while _has_job(dom) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    if dom is None:  # undefined here: a completed persistent migration, or the VM is gone for good
        there = find_by_uuid(dest, uuid) if uuid else find_by_name(dest, data.name or "")
        if there is not None and _running(there):
            return _success_reply(there, data)
        return _failed_reply(data, "the VM is on neither host", [], None)
    # Not libvirt's word that it completed: a VM still here after the abort is the expected outcome, not an error.
    outcome = settle(dom, dest, libvirt.libvirtError("the worker stopped mid-migration; its job was aborted"))
    if outcome.on == "destination":
        return _success_reply(find_by_uuid(dest, dom.UUIDString()), data)
    return _failed_reply(data, f"{dom.name()} was not migrated", outcome.cleaned, outcome.source_state)


def _success_reply(there: libvirt.virDomain, data: MigrateData) -> dict:
    stats = _completed_stats(there)
    body = {
        "name": there.name(),
        "uuid": there.UUIDString(),
        "destination": data.destination,
        "downtime_ms": stats.get("downtime"),
        "duration_s": None,
        "transferred_bytes": stats.get("data_processed"),
        "interrupted": True,
    }
    return {"code": 0, "msg": "成功", "data": body}


def _failed_reply(data: MigrateData, what: str, cleaned: list[str], state: str | None) -> dict:
    detail = f"{what}: the worker stopped while it migrated to {data.destination}; the job was aborted on its return"
    body = {"detail": detail, "reason": INTERRUPTED_REASON, "cleaned": cleaned, "state": state}
    return {"code": int(MigrationFailed.code), "msg": MigrationFailed.code.msg, "data": body}


def _has_job(dom: libvirt.virDomain) -> bool:
    try:
        return dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:
        return False
