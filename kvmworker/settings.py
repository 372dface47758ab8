"""Settings: command-line flags over ``KVMWORKER_*`` environment variables over a config file over defaults.

One class for every sub-command; each reads only the fields it needs. The config file is TOML or
JSON (``--config`` / ``KVMWORKER_CONFIG``), with the same names as the flags (``broker_url = "..."``).
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "KVMWORKER_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_nested_delimiter="__")

    # the worker
    host: str = Field(
        default_factory=socket.gethostname, description="This host's name: its queue is kvmworker.<host>."
    )
    broker_url: str = Field(default="memory://", description="amqp://, redis:// or memory://")
    state_dir: Path = Field(default=Path("/var/lib/kvmworker"), description="SQLite state: networks, journal.")
    netns: str | None = Field(default=None, description="Operate inside this network namespace.")
    libvirt_uri: str = Field(default="qemu:///system")
    prefetch: int = Field(default=32, ge=1, le=10000, description="Unacknowledged messages the worker holds.")
    workers: int = Field(default=16, ge=1, le=1024, description="Commands that run at once.")
    max_body: int = Field(default=1024 * 1024, ge=1024, description="Largest accepted message body, bytes.")
    publish_confirms: bool = Field(default=True, description="Wait for the broker to confirm each reply (AMQP).")
    redis_visibility_timeout: float = Field(default=1800.0, gt=0, description="Redis: redeliver unacked after s.")
    physical_interfaces: list[str] | None = Field(
        default=None, description="Interfaces networks may use; default any existing non-virtual interface."
    )
    storage_dirs: list[Path] = Field(
        default_factory=lambda: [Path("/var/lib/libvirt/images")], description="Where VM disk images may live."
    )
    storage_pool: str = Field(default="default", description="libvirt pool for new volumes.")
    health_port: int | None = Field(default=None, description="Worker /healthz, /readyz, /metrics port.")
    health_bind: str = Field(default="0.0.0.0", description="Address of the health port (probes come from outside).")
    keys_file: Path | None = Field(
        default=None,
        description="Private Ed25519 keys this party signs with (0600): the orchestrator's command keys (call,"
        " bridge, replay), or a worker's reply key (default there: <state_dir>/reply-keys.json, made at first start).",
    )
    trusted_keys_file: Path | None = Field(
        default=None,
        description="Public Ed25519 keys this party trusts: `orchestrator` (a worker runs only commands they"
        " signed) and `hosts` (a client accepts a host's reply only when signed by that host's key).",
    )
    journal_max_age_days: float = Field(default=30.0, gt=0, description="Journal entries older than this go.")
    journal_max_mb: float = Field(default=512.0, gt=0, description="The journal is kept under this size.")

    # the bridge and the client
    port: int = Field(default=8080, ge=0, le=65535)
    bind: str = Field(default="127.0.0.1")
    default_host: str | None = None
    allowed_hosts: list[str] | None = Field(
        default=None, description="Bridge: the only hosts it forwards to (default: any; each new one gets a queue)."
    )
    users_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for a reply.")
    token_ttl: float = Field(default=3600.0, gt=0, description="Bridge: seconds a login token stays valid.")

    # logging
    log_level: str = "INFO"
    log_json: bool = False

    config_file: Path | None = Field(default=None, exclude=True, description="TOML or JSON config file.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls, init_settings, env_settings))

    @property
    def host_for_bridge(self) -> str:
        return self.default_host or self.host


class _ConfigFileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], *earlier: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._earlier = earlier

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = next((src().get("config_file") for src in self._earlier if src().get("config_file")), None)
        path = path or os.environ.get(f"{ENV_PREFIX}CONFIG")
        return load_config_file(Path(path)) if path else {}


def load_config_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    return tomllib.loads(text)
