"""One structured log line per command, and the command's context on every line logged while it runs.

With ``--log-json`` each line carries msg_id, correlation_id, handler, command, principal (and, on the closing
line, code and duration_ms); ``CommandContextFilter`` adds the first five to whatever a handler logs
on the command's thread, so ``grep msg_id`` finds everything about one command.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kvmworker.dispatch.inflight import InFlight
from kvmworker.dispatch.middleware import Middleware
from kvmworker.protocol.envelope import Reply

log = logging.getLogger("kvmworker.commands")

# A command runs on one pool thread from before_execute to after_reply: the thread is the context.
# Process-wide like the threads themselves, hence module state.
_current = threading.local()


def command_fields(msg: InFlight) -> dict[str, Any]:
    envelope = msg.envelope
    return {
        "msg_id": msg.msg_id,
        "correlation_id": msg.delivery.correlation_id,
        "handler": envelope.handler if envelope else None,
        "command": envelope.command if envelope else None,
        "principal": envelope.principal if envelope else None,
    }


class CommandLogMiddleware(Middleware[None]):
    def before_execute(self, msg: InFlight) -> Reply | None:
        _current.msg = msg  # its fields are made only if something is logged meanwhile (``CommandContextFilter``)
        return None

    def after_reply(self, msg: InFlight, reply: Reply, duration: float) -> None:
        _current.msg = None
        level = logging.INFO if reply.code == 0 else logging.WARNING
        if not log.isEnabledFor(level):
            return
        fields = command_fields(msg) | {"code": reply.code, "duration_ms": round(duration * 1000, 3)}
        name = f"{fields['handler']}.{fields['command']}" if fields["handler"] else "(undecodable message)"
        detail = _detail(reply)
        if detail is not None:
            fields["detail"] = detail
        log.log(
            level,
            "[%s] %s%s → %d in %.1f ms%s%s",
            msg.msg_id,
            name,
            f" by {fields['principal']}" if fields["principal"] else "",
            reply.code,
            fields["duration_ms"],
            " (redelivered)" if msg.delivery.redelivered else "",
            f": {detail}" if detail is not None else "",
            extra=fields,
        )


def _detail(reply: Reply) -> str | None:
    """Why a command failed, as its reply tells the caller (the one line about a refusal says it)."""
    if reply.code == 0 or not isinstance(reply.data, dict):
        return None
    detail = reply.data.get("detail")
    return str(detail)[:500] if detail is not None else None


class CommandContextFilter(logging.Filter):
    """Put on a log handler: records logged during a command gain its fields (explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = getattr(_current, "msg", None)
        if msg is None:
            return True
        for key, value in command_fields(msg).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def install_context_filter(logger: logging.Logger | None = None) -> None:
    """On every handler of ``logger`` (the root by default), once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, CommandContextFilter) for f in handler.filters):
            handler.addFilter(CommandContextFilter())
