"""Where every log line goes: stderr, one format for the whole process (uvicorn and kombu included).

``setup_logging`` gives the root logger one handler, and every library logger propagates to it, so that
with ``--log-json`` every line on stderr is one JSON object, whoever logs it. The handler masks URL
passwords and bearer tokens in every record (``SecretFilter``): kombu and redis put URLs in their
messages, and a password must not reach the log whatever code path logs it.

Imports nothing heavy: every sub-command sets up its logging first.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any

from kvmworker.protocol.urls import mask_secrets

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log through their own loggers; their lines go through the root handler like ours.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# Chatty at INFO about every connection; their warnings and errors are kept.
QUIET_LOGGERS = ("kombu", "amqp")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; command context (msg_id, handler, ...) rides in ``extra``."""

    CONTEXT = ("msg_id", "correlation_id", "host", "handler", "command", "principal", "code", "duration_ms", "detail")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in self.CONTEXT:
            if hasattr(record, key):
                value = getattr(record, key)
                line[key] = mask_secrets(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


class SecretFilter(logging.Filter):
    """Put on a log handler: URL passwords and bearer tokens masked in the message and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged, not to the one there at setup.

    A handler bound to the stream of its day writes into a closed file once that stream is replaced and
    closed (a test's captured stderr, a redirected one), and a thread that logs late then prints
    ``--- Logging error ---`` with its message instead of the line.
    """

    def __init__(self, level: int = logging.NOTSET):
        logging.Handler.__init__(self, level)  # not StreamHandler's: it would bind the stream

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def setup_logging(settings: Any) -> logging.Handler:
    """The root logger's one handler, in ``settings.log_json`` format at ``settings.log_level``."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if settings.log_json else logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    for name in UVICORN_LOGGERS:
        # uvicorn configures handlers of its own unless told not to (``log_config=None``, see
        # bridge/server.py); should anything have, its lines still come here, formatted like ours
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # What Python itself would print to stderr goes through the handler too: warnings, and a thread's
    # uncaught exception (else a plain-text traceback lands among the JSON lines)
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    return handler


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("kvmworker").error("uncaught exception in thread %s", name, exc_info=exc_info)
