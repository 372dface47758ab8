"""What every sub-command shares: flags that map onto Settings fields, and logging."""

from __future__ import annotations

import argparse
import json
from typing import Any

# logging lives in observability; imported here, where every sub-command finds it
from kvmworker.observability.logsetup import JsonFormatter, setup_logging  # noqa: F401
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
        elif field in ("physical_interfaces", "storage_dirs", "allowed_hosts"):
            kwargs["action"] = "append"
        else:
            kwargs["metavar"] = flag.upper().replace("-", "_")
        parser.add_argument(f"--{flag}", **kwargs)


def settings_from(args: argparse.Namespace) -> Settings:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings(**given)


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))
