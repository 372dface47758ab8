"""What every sub-command shares: flags that map onto Settings fields, and logging."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from kvmworker.settings import Settings

# flag → Settings field, where the contract's flag name differs from the field name
FLAG_FIELDS = {"broker": "broker_url", "users": "users_file", "config": "config_file"}


def add_settings_flags(parser: argparse.ArgumentParser, *flags: str) -> None:
    """``--state-dir`` etc.; each also reads KVMWORKER_<FIELD> and the config file (flags win)."""
    fields = Settings.model_fields
    for flag in ("config", "log-level", "log-json", *flags):
        field = FLAG_FIELDS.get(flag, flag.replace("-", "_"))
        info = fields[field]
        kwargs: dict[str, Any] = {"dest": field, "default": None, "help": info.description or ""}
        if info.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif field in (
            "physical_interfaces",
            "storage_dirs",
            "allowed_hosts",
            "server_names",
            "forwarded_allow_ips",
        ):
            kwargs["action"] = "append"
        else:
            kwargs["metavar"] = flag.upper().replace("-", "_")
        parser.add_argument(f"--{flag}", **kwargs)


def settings_from(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; command context (msg_id, handler, ...) rides in ``extra``."""

    CONTEXT = ("msg_id", "correlation_id", "handler", "command", "principal", "code", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: getattr(record, k) for k in self.CONTEXT if hasattr(record, k)})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    logging.getLogger("kombu").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("amqp").setLevel(max(root.level, logging.WARNING))


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))
