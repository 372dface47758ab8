"""``kvmworker status [--host H] [--json]``: one screen for the operator on call.

Where each part comes from:

- ``broker``: one connection attempt from here; ``queue``: the host queue's depth and consumers, from the broker
  (a passive declare: nothing is created);
- ``worker``, ``libvirt``, ``commands``, ``last_errors``: the worker's own ``SystemHandler.status``;
- ``networks``: the worker's ``NetworkHandler.list`` (each network ``ok`` or ``drift``);
- when the worker does not answer and it is this machine's worker, ``commands`` and ``last_errors`` are read
  from the local journal (``--state-dir``) instead, and ``source`` says so.

Exit codes: 0 all is well, 1 the worker answered but something needs a look (libvirt unavailable, a network
drifted), 2 the worker did not answer, 64 usage, 69 the broker (or the bridge, with ``--url``) cannot be reached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from kvmworker.cli.common import (
    EXIT_ERROR_REPLY,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_UNKNOWN_OUTCOME,
    CliError,
    add_settings_flags,
    broker_reachable,
    mask_url,
    refuse_lonely_memory,
    settings_from,
    setup_logging,
)

DEFAULT_TIMEOUT_S = 5.0  # unless --timeout (or KVMWORKER_TIMEOUT, or timeout =) says otherwise
SCHEMA_VERSION = 1
LAST_EVENTS_SHOWN = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="one screen for the operator on call: broker, libvirt, queue, running, errors, networks"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object (its shape is documented in README)")
    add_settings_flags(
        parser, "host", "broker", "url", "token", "token-file", "timeout", "state-dir", "keys-file", "trusted-keys-file"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    if not settings.url:
        refuse_lonely_memory(settings.broker, "status")
    timeout = settings.timeout if "timeout" in settings.model_fields_set else DEFAULT_TIMEOUT_S
    report = gather(settings, timeout)
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_screen(report, sys.stdout)
    return exit_code(report)


def gather(settings: Any, timeout: float) -> dict[str, Any]:
    host = settings.host
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "host": host,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "broker": None,
        "bridge": None,
        "queue": None,
        "worker": {"answered": False, "error": None},
        "libvirt": None,
        "commands": None,
        "last_errors": [],
        "networks": None,
        "events": None,
        "source": None,
    }
    with contextlib.ExitStack() as closing:
        ask = _asker(settings, report, timeout, closing)
        if ask is not None:
            _ask_worker(ask, report)
    if not report["worker"]["answered"]:
        _read_local_journal(settings, report)
    report["healthy"] = _healthy(report)
    return report


def _asker(settings: Any, report: dict[str, Any], timeout: float, closing: contextlib.ExitStack) -> Any:
    """A function (handler, command) → reply dict, or None when neither broker nor bridge can be reached."""
    from kvmworker.cli.call import bearer_token, call_over_http

    if settings.url:
        report["bridge"] = {"url": settings.url, "reachable": True, "error": None}

        def over_http(handler: str, command: str) -> dict[str, Any]:
            envelope = {"handler": handler, "command": command, "data": {}, "dry_run": False, "msg_id": None}
            try:
                return call_over_http(settings.url, settings.host, envelope, timeout, bearer_token(settings))
            except CliError as exc:
                report["bridge"].update(reachable=False, error=str(exc))
                return {"code": None, "msg": str(exc), "data": {}}

        return over_http
    report["broker"] = {"url": mask_url(settings.broker), "reachable": False, "error": None}
    try:
        broker_reachable(settings.broker)
    except CliError as exc:
        report["broker"]["error"] = str(exc).split(": ", 1)[-1]
        return None
    report["broker"]["reachable"] = True
    report["queue"] = queue_depth(settings.broker, settings.host)
    if not report["queue"]["exists"]:
        # asking would declare the queue (the client does, for every host it calls): status creates nothing
        report["worker"]["error"] = (
            f"no queue {report['queue']['name']}: no worker for this host started on this broker"
        )
        return None
    return _over_broker(settings, timeout, closing)


def _over_broker(settings: Any, timeout: float, closing: contextlib.ExitStack) -> Any:
    from kvmworker.client import Client
    from kvmworker.trust.signing import load_signer

    client = closing.enter_context(Client(settings.broker, signer=load_signer(settings)))

    def over_broker(handler: str, command: str) -> dict[str, Any]:
        return client.call(settings.host, handler, command, {}, timeout=timeout).model_dump(mode="json")

    return over_broker


def queue_depth(url: str, host: str) -> dict[str, Any]:
    """Messages waiting in the host's queue and its consumers, without creating the queue if it is not there."""
    from kvmworker.transport.connection import open_connection
    from kvmworker.transport.names import host_queue_name

    name = host_queue_name(host)
    try:
        with open_connection(url) as conn:
            _, messages, consumers = conn.default_channel.queue_declare(queue=name, passive=True)
    except Exception as exc:
        missing = "NOT_FOUND" in str(exc) or "no queue" in str(exc).lower()
        return {"name": name, "exists": not missing, "messages": None, "consumers": None, "error": str(exc)}
    return {"name": name, "exists": True, "messages": messages, "consumers": consumers, "error": None}


def _ask_worker(ask: Any, report: dict[str, Any]) -> None:
    reply = ask("SystemHandler", "status")
    if reply.get("code") != 0:
        report["worker"]["error"] = _reason(reply)
        if reply.get("code") in (None, -1):
            return
        reply = ask("SystemHandler", "ping")  # a worker from before `status`
        if reply.get("code") != 0:
            return
    data = reply.get("data") or {}
    report["worker"] = {
        "answered": True,
        "error": report["worker"]["error"],
        **{k: data.get(k) for k in ("hostname", "version", "uptime")},
    }
    report["libvirt"] = data.get("libvirt")
    report["commands"] = data.get("commands")
    report["last_errors"] = data.get("last_errors") or []
    report["events"] = data.get("events")
    report["source"] = "worker"
    report["networks"] = _networks(ask("NetworkHandler", "list"))


def _networks(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("code") != 0:
        return {"total": None, "ok": None, "drift": [], "error": _reason(reply)}
    networks = (reply.get("data") or {}).get("networks") or []
    drifted = [
        {"network_id": n.get("network_id"), "name": n.get("name"), "drift": n.get("drift") or []}
        for n in networks
        if n.get("state") != "ok"
    ]
    return {"total": len(networks), "ok": len(networks) - len(drifted), "drift": drifted, "error": None}


def _read_local_journal(settings: Any, report: dict[str, Any]) -> None:
    """This machine's worker did not answer: what its journal says is still worth reading."""
    from kvmworker.handlers.system import journal_summary
    from kvmworker.journal.store import JournalStore, journal_path

    _read_local_events(settings, report)
    path = journal_path(settings.state_dir)
    if not path.exists():
        return
    try:
        summary = journal_summary(JournalStore.open_existing(path))
    except Exception as exc:
        report["source"] = f"local journal at {path} unreadable: {exc}"
        return
    report.update(summary, source=f"local journal at {path}")


def _read_local_events(settings: Any, report: dict[str, Any]) -> None:
    """The local worker's event sequence, buffer and last events, from its state directory."""
    from kvmworker.events.buffer import FILE_NAME, EventBuffer
    from kvmworker.events.wiring import events_summary

    path = settings.state_dir / FILE_NAME
    if not path.exists():
        return
    buffer = EventBuffer(path)
    try:
        report["events"] = events_summary(buffer)
    except Exception as exc:
        report["events"] = {"error": f"{path} unreadable: {exc}"}
    finally:
        buffer.close()


def _reason(reply: dict[str, Any]) -> str:
    detail = (reply.get("data") or {}).get("detail")
    said = " ".join(str(part) for part in (reply.get("code"), reply.get("msg")) if part is not None)
    return said + (f": {detail}" if detail else "")


def _healthy(report: dict[str, Any]) -> bool:
    libvirt = report["libvirt"]
    networks = report["networks"]
    return bool(
        report["worker"]["answered"]
        and (libvirt is None or libvirt.get("available", True))
        and (networks is None or (not networks["drift"] and networks["error"] is None))
    )


def exit_code(report: dict[str, Any]) -> int:
    for reach in (report["broker"], report["bridge"]):
        if reach is not None and not reach["reachable"]:
            return EXIT_UNAVAILABLE
    if not report["worker"]["answered"]:
        return EXIT_UNKNOWN_OUTCOME
    return EXIT_OK if report["healthy"] else EXIT_ERROR_REPLY


# -- the screen ------------------------------------------------------------------------


def print_screen(report: dict[str, Any], out: TextIO) -> None:
    line = _liner(out)
    out.write(f"kvmworker status for host {report['host']}, {report['checked_at']}\n")
    if report["bridge"] is not None:
        bridge = report["bridge"]
        line("bridge", bridge["reachable"], f"{bridge['url']}" + (f": {bridge['error']}" if bridge["error"] else ""))
    if report["broker"] is not None:
        broker = report["broker"]
        line("broker", broker["reachable"], broker["url"] + (f": {broker['error']}" if broker["error"] else ""))
    queue = report["queue"]
    if queue is not None:
        if queue["messages"] is None:
            line("queue", False, f"{queue['name']}: " + ("does not exist" if not queue["exists"] else queue["error"]))
        else:
            text = f"{queue['name']}: {queue['messages']} waiting, {queue['consumers']} consumer(s)"
            line("queue", bool(queue["consumers"]) or queue["consumers"] is None, text)
    worker = report["worker"]
    if worker["answered"]:
        up = _duration(worker.get("uptime"))
        line("worker", True, f"version {worker.get('version')}, up {up}, on {worker.get('hostname')}")
    else:
        line("worker", False, f"not answering: {worker['error'] or 'not asked, the broker cannot be reached'}")
    libvirt = report["libvirt"]
    if libvirt is not None:
        if libvirt.get("available", True):
            line("libvirt", True, f"{libvirt.get('uri')}, daemon {libvirt.get('daemon')}, {libvirt.get('hypervisor')}")
        else:
            line("libvirt", False, libvirt.get("reason") or "unavailable")
    commands = report["commands"]
    if commands is not None:
        line("commands", None, f"{commands['running']} running ({commands['journal_entries']} in the journal)")
    networks = report["networks"]
    if networks is not None:
        if networks["error"]:
            line("networks", False, networks["error"])
        else:
            drift = "; ".join(f"{n['network_id']}: {', '.join(n['drift']) or 'drift'}" for n in networks["drift"])
            line("networks", not networks["drift"], f"{networks['ok']} ok" + (f", drift: {drift}" if drift else ""))
    if report["source"] and report["source"] != "worker":
        line("source", None, report["source"])
    _print_events(report.get("events"), line, out)
    errors = report["last_errors"]
    out.write("last errors" + ("" if errors else ": none") + "\n")
    for error in errors:
        when = datetime.fromtimestamp(error["received_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        what = f"{error['handler']}.{error['command']}"
        text = error.get("detail") or error.get("msg") or ""
        out.write(f"  {when}  {error['msg_id'][:8]}  {what}  {error['code']}  {text}\n")


def _print_events(events: dict[str, Any] | None, line: Any, out: TextIO) -> None:
    if events is None:
        return
    if events.get("error"):
        line("events", False, events["error"])
        return
    sent = {True: ", published", False: ", NOT reaching the broker", None: ""}[events.get("connected")]
    text = f"seq {events['seq']}, {events['buffered']} buffered, {events['dropped']} dropped{sent}"
    line("events", events.get("connected"), text)
    last = events.get("last") or []
    out.write("last events" + ("" if last else ": none") + "\n")
    for event in last[-LAST_EVENTS_SHOWN:]:
        when = datetime.fromtimestamp(event["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        what = f"{event['source']}.{event['kind']}"
        reason = f" ({event['reason']})" if event.get("reason") else ""
        out.write(f"  {when}  #{event['seq']}  {what}  {event['subject']}  {event['state']}{reason}\n")


def _liner(out: TextIO) -> Any:
    def line(label: str, ok: bool | None, text: str) -> None:
        mark = "" if ok is None else ("ok" if ok else "FAIL")
        out.write(f"{label:<10} {mark:<5} {text}\n")

    return line


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + time.strftime("%Hh%Mm%Ss", time.gmtime(rest))
