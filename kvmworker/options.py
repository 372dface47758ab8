"""Every setting's one name, its kind and its help, without pydantic.

One word per setting: the flag ``--state-dir``, the variable ``KVMWORKER_STATE_DIR`` and the config file key
``state_dir`` are the same name. The command line is built from this table alone, so that ``--help`` does not
pay for importing pydantic; ``Settings`` (kvmworker.settings) takes its descriptions from it, and a
test keeps the two in step.
"""

from __future__ import annotations

from typing import NamedTuple

ENV_PREFIX = "KVMWORKER_"


class Option(NamedTuple):
    help: str
    kind: str = "value"  # "value", "flag" (a boolean: --x / --no-x) or "list" (repeat the flag)


OPTIONS: dict[str, Option] = {
    # the worker
    "host": Option("This host's name: its queue is kvmworker.<host>."),
    "broker": Option("amqp://, redis:// or memory:// (memory:// lives inside one process)."),
    "state_dir": Option("SQLite state: networks, journal."),
    "netns": Option("Operate inside this network namespace."),
    "libvirt_uri": Option("libvirt connection URI."),
    "prefetch": Option("Unacknowledged messages the worker holds."),
    "workers": Option("Commands that run at once."),
    "max_body": Option("Largest accepted message body, bytes."),
    "publish_confirms": Option("Wait for the broker to confirm each reply (AMQP).", "flag"),
    "redis_visibility_timeout": Option("Redis: redeliver unacked after s."),
    "physical_interfaces": Option(
        "Interfaces networks may use; default any existing non-virtual interface (repeat the flag).", "list"
    ),
    "storage_dirs": Option("Where VM disk images may live (repeat the flag).", "list"),
    "storage_pool": Option("libvirt pool for new volumes."),
    "migration_uri": Option("migrate: the destination's libvirt URI, {host} standing for its host name."),
    "migration_data_uri": Option(
        "migrate: where the memory goes (libvirt's migrate URI, e.g. tcp://{host}); default: libvirt's choice."
    ),
    "max_migrations": Option("migrate: outgoing migrations at once; more wait their turn."),
    "migration_progress_timeout": Option("migrate: seconds without progress before a migration is aborted."),
    "health_port": Option("Worker /healthz, /readyz, /metrics port."),
    "health_bind": Option("Address of the health port (probes come from outside)."),
    "keys_file": Option(
        "Private Ed25519 keys this party signs with (0600): the orchestrator's command keys (call, bridge,"
        " replay), or a worker's reply key (default there: <state_dir>/reply-keys.json, made at first start)."
    ),
    "trusted_keys_file": Option(
        "Public Ed25519 keys this party trusts: `orchestrator` (a worker runs only commands they signed) and"
        " `hosts` (a client accepts a host's reply only when that host's key signed it)."
    ),
    "journal_max_age_days": Option("Journal entries older than this go."),
    "journal_max_mb": Option("The journal is kept under this size."),
    "resync_interval": Option("Seconds between worker.state sync events (the whole picture)."),
    "event_buffer": Option("Events kept on disk while the broker is unreachable; past it the oldest go."),
    # the bridge and the client
    "port": Option("Bridge: HTTP port."),
    "bind": Option("Bridge: address to listen on."),
    "default_host": Option("Bridge: the host a POST without X-Kvm-Host goes to."),
    "allowed_hosts": Option(
        "Bridge: the only hosts it forwards to (default: any host whose queue exists; repeat the flag).", "list"
    ),
    "users": Option("Bridge: the users file (who may log in); none: no login needed."),
    "timeout": Option("Seconds to wait for a reply."),
    "url": Option("call/status: reach a running `serve` or `bridge` over HTTP (http://host:8080/), not the broker."),
    "token": Option("call/status with --url: the bridge's login token (sent as Authorization: Bearer)."),
    "token_ttl": Option("Bridge: seconds a login token stays valid."),
    "token_file": Option(
        "Bridge: write a fresh bearer token here at start (mode 0600; serve: /run/kvmworker/token). "
        "call/status/replay with --url: read the token from it (default: /run/kvmworker/token when readable)."
    ),
    "insecure_open": Option("Bridge: run with no authentication at all (only behind a proxy that checks).", "flag"),
    "server_names": Option(
        "Bridge: Host header names accepted besides IP addresses and localhost ('*': any; repeat the flag).", "list"
    ),
    "forwarded_allow_ips": Option("Bridge: proxies whose X-Forwarded-For is believed (default: none).", "list"),
    "max_connections": Option("Bridge: open connections at most."),
    "header_timeout": Option("Bridge: seconds to send a request's headers."),
    "body_timeout": Option("Bridge: seconds to send a request's body."),
    # logging
    "log_level": Option("DEBUG, INFO, WARNING or ERROR."),
    "log_json": Option("One JSON object per log line.", "flag"),
    "config": Option("TOML or JSON config file, with the same names as keys."),
}

# Older spellings, still accepted as flags' file keys and variables (KVMWORKER_BROKER_URL, broker_url = …).
OLD_NAMES: dict[str, str] = {"broker_url": "broker", "users_file": "users", "config_file": "config"}


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def variable_of(name: str) -> str:
    return ENV_PREFIX + name.upper()


def name_of_flag(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
