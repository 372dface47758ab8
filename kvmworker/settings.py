"""Settings: command-line flags over ``KVMWORKER_*`` environment variables over a config file over defaults.

One name per setting (kvmworker.options): flag ``--broker``, variable ``KVMWORKER_BROKER``, file key ``broker``.
The older spellings ``broker_url``/``users_file``/``config_file`` (and their variables) are still accepted, and
``settings.broker_url`` etc. still read. The config file is TOML or JSON (``--config`` / ``KVMWORKER_CONFIG``).

Two ways in: ``Settings(...)`` reads every source and validates every field (the library, the tests);
``load_settings(given, used)`` (the command line) validates only the fields a sub-command uses, so that a bad
worker-only variable does not break ``journal list``, and names the flag, variable or file key that is wrong.

Both read the sources here (``environment_values``, ``load_config_file``), on a plain pydantic model: not
pydantic-settings, whose sources (CLI, dotenv, cloud secret stores) the worker never used and whose import cost
every worker ~2 MB of its memory.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kvmworker.options import ENV_PREFIX, OLD_NAMES, OPTIONS, flag_of, variable_of


def _help(name: str) -> str:
    return OPTIONS[name].help


class SettingsError(ValueError):
    """A setting that cannot be used, said with the name the operator wrote (flag, variable or file key)."""


class Settings(BaseModel):
    """``Settings(**given)``: ``given`` over the ``KVMWORKER_*`` variables (the old spellings after the new) over
    the config file (``config``/``config_file`` given, else ``KVMWORKER_CONFIG``) over the defaults."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    def __init__(self, **given: Any):
        super().__init__(**every_source(given))

    # the worker
    host: str = Field(default_factory=socket.gethostname, description=_help("host"))
    broker: str = Field(default="memory://", description=_help("broker"))
    state_dir: Path = Field(default=Path("/var/lib/kvmworker"), description=_help("state_dir"))
    netns: str | None = Field(default=None, description=_help("netns"))
    libvirt_uri: str = Field(default="qemu:///system", description=_help("libvirt_uri"))
    prefetch: int = Field(default=32, ge=1, le=10000, description=_help("prefetch"))
    workers: int = Field(default=16, ge=1, le=1024, description=_help("workers"))
    max_body: int = Field(default=1024 * 1024, ge=1024, description=_help("max_body"))
    publish_confirms: bool = Field(default=True, description=_help("publish_confirms"))
    redis_visibility_timeout: float = Field(default=1800.0, gt=0, description=_help("redis_visibility_timeout"))
    physical_interfaces: list[str] | None = Field(default=None, description=_help("physical_interfaces"))
    storage_dirs: list[Path] = Field(
        default_factory=lambda: [Path("/var/lib/libvirt/images")], description=_help("storage_dirs")
    )
    storage_pool: str = Field(default="default", description=_help("storage_pool"))
    migration_uri: str = Field(default="qemu+tls://{host}/system", description=_help("migration_uri"))
    migration_data_uri: str | None = Field(default=None, description=_help("migration_data_uri"))
    max_migrations: int = Field(default=2, ge=1, le=64, description=_help("max_migrations"))
    migration_progress_timeout: float = Field(default=150.0, gt=0, description=_help("migration_progress_timeout"))
    health_port: int | None = Field(default=None, ge=0, le=65535, description=_help("health_port"))
    health_bind: str = Field(default="0.0.0.0", description=_help("health_bind"))
    keys_file: Path | None = Field(default=None, description=_help("keys_file"))
    trusted_keys_file: Path | None = Field(default=None, description=_help("trusted_keys_file"))
    journal_max_age_days: float = Field(default=30.0, gt=0, description=_help("journal_max_age_days"))
    journal_max_mb: float = Field(default=512.0, gt=0, description=_help("journal_max_mb"))
    resync_interval: float = Field(default=300.0, gt=0, description=_help("resync_interval"))
    event_buffer: int = Field(default=10_000, ge=1, le=10_000_000, description=_help("event_buffer"))

    # the bridge and the client
    port: int = Field(default=8080, ge=0, le=65535, description=_help("port"))
    bind: str = Field(default="127.0.0.1", description=_help("bind"))
    default_host: str | None = Field(default=None, description=_help("default_host"))
    allowed_hosts: list[str] | None = Field(default=None, description=_help("allowed_hosts"))
    users: Path | None = Field(default=None, description=_help("users"))
    timeout: float = Field(default=30.0, gt=0, description=_help("timeout"))
    token_ttl: float = Field(default=3600.0, gt=0, description=_help("token_ttl"))
    url: str | None = Field(default=None, pattern=r"^https?://", description=_help("url"))
    token: str | None = Field(default=None, exclude=True, repr=False, description=_help("token"))
    token_file: Path | None = Field(default=None, description=_help("token_file"))
    insecure_open: bool = Field(default=False, description=_help("insecure_open"))
    server_names: list[str] | None = Field(default=None, description=_help("server_names"))
    forwarded_allow_ips: list[str] | None = Field(default=None, description=_help("forwarded_allow_ips"))
    max_connections: int = Field(default=1000, ge=8, description=_help("max_connections"))
    header_timeout: float = Field(default=10.0, gt=0, description=_help("header_timeout"))
    body_timeout: float = Field(default=30.0, gt=0, description=_help("body_timeout"))

    # logging
    log_level: str = Field(default="INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    log_json: bool = Field(default=False, description=_help("log_json"))

    config: Path | None = Field(default=None, exclude=True, description=_help("config"))

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, values: Any) -> Any:
        """``broker_url=`` etc. In a merged dict an old key can only come from the caller's own arguments
        (the variables and the file are renamed on reading), which win over everything else."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        for old, new in OLD_NAMES.items():
            if old in values:
                values[new] = values.pop(old)
        return values

    @field_validator("migration_uri", "migration_data_uri")
    @classmethod
    def _host_template(cls, value: str | None) -> str | None:
        """A template whose only placeholder is ``{host}`` (``{{``/``}}`` for literal braces)."""
        if value is not None:
            try:
                value.format(host="h")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"only {{host}} may stand in it ({exc!r})") from None
        return value

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """As pydantic's, with the old names in ``update`` renamed (else they would be set beside the field)."""
        renamed = {OLD_NAMES.get(k, k): v for k, v in update.items()} if update else update
        return super().model_copy(update=renamed, deep=deep)

    # the older attribute names, which the code and its users still read
    @property
    def broker_url(self) -> str:
        return self.broker

    @property
    def users_file(self) -> Path | None:
        return self.users

    @property
    def config_file(self) -> Path | None:
        return self.config

    @property
    def host_for_bridge(self) -> str:
        return self.default_host or self.host


class _Given(Settings):
    """Exactly the values given, validated: no variable or file is read behind the caller's back."""

    def __init__(self, **given: Any):
        BaseModel.__init__(self, **given)


def every_source(given: Mapping[str, Any]) -> dict[str, Any]:
    """What ``Settings(**given)`` validates: ``given`` (old names renamed) over the environment over the file."""
    given = {OLD_NAMES.get(k, k): v for k, v in given.items()}
    env = {name: value for name, (value, _) in environment_values(OPTIONS).items()}
    path = given.get("config") or env.get("config")
    return (load_config_file(Path(path)) if path else {}) | env | given


def load_config_file(path: Path) -> dict[str, Any]:
    """The file's settings under their names: old spellings and ``state-dir`` (as the flag) are renamed;
    an unknown key, a file that is not there or not TOML/JSON is a SettingsError naming it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix == ".json":
            raw = json.loads(text)
        else:
            import tomllib  # only a worker given a TOML file needs the parser

            raw = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError included
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise SettingsError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"config file {path}: expected a table of settings")
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        name = OLD_NAMES.get(name, name)
        if name not in OPTIONS or name == "config":
            raise SettingsError(f"config file {path}: unknown key {key!r}{_did_you_mean(name)}")
        values[name] = value
    return values


def _did_you_mean(name: str) -> str:
    import difflib  # here: only a misspelt key needs it, not every worker's memory

    close = difflib.get_close_matches(name, [n for n in OPTIONS if n != "config"], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def environment_values(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, tuple[Any, str]]:
    """``{name: (value, "KVMWORKER_NAME")}`` for the given settings that the environment sets; the new
    variable wins over its old spelling. Lists: a JSON array or comma-separated words."""
    environ = {k.upper(): v for k, v in (os.environ if environ is None else environ).items()}
    old_of = {new: old for old, new in OLD_NAMES.items()}
    found = {}
    for name in names:
        for variable in (variable_of(name), *((variable_of(old_of[name]),) if name in old_of else ())):
            if variable in environ:
                found[name] = (_from_text(name, environ[variable], variable), variable)
                break
    return found


def _from_text(name: str, text: str, variable: str) -> Any:
    if OPTIONS[name].kind != "list":
        return text
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SettingsError(f"{variable}: not a JSON array ({exc})") from None
    return [word.strip() for word in text.split(",") if word.strip()]


def load_settings(given: Mapping[str, Any], used: Iterable[str], environ: Mapping[str, str] | None = None) -> Settings:
    """The command line's settings: ``given`` (flags) over the environment over the config file over defaults,
    reading and validating only the settings in ``used`` (and ``given``). Raises SettingsError."""
    used = {*used, *given, "log_level", "log_json"}
    env = environment_values([*used, "config"], environ)
    config = given.get("config") or (env["config"][0] if "config" in env else None)
    values: dict[str, tuple[Any, str]] = {}
    if config:
        path = Path(config)
        values.update({k: (v, f"{k} in {path}") for k, v in load_config_file(path).items() if k in used})
    values.update({k: v for k, v in env.items() if k in used})
    values.update({k: (v, flag_of(k)) for k, v in given.items()})
    try:
        return _Given(**{k: v for k, (v, _) in values.items()})
    except ValidationError as exc:
        raise SettingsError(_first_problem(exc, {k: where for k, (_, where) in values.items()})) from None


def _first_problem(exc: ValidationError, where: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    source = where.get(name, name)
    value = error.get("input")
    if source.startswith(ENV_PREFIX):
        return f"{source}={value}: {error['msg']}"
    if source.startswith("--"):
        return f"{source} {value}: {error['msg']}"
    return f"{source} = {value!r}: {error['msg']}"
