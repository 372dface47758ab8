"""The command line and its settings: flags over KVMWORKER_* over the config file over defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmworker.api.catalogue import worker_commands
from kvmworker.cli import build_parser
from kvmworker.cli.common import settings_from
from kvmworker.schema import build_schemas, render
from kvmworker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_a_flag_wins_over_the_environment_which_wins_over_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "worker.toml"
    config.write_text('broker_url = "redis://file/0"\nprefetch = 3\nworkers = 5\n')
    monkeypatch.setenv("KVMWORKER_PREFETCH", "7")
    monkeypatch.setenv("KVMWORKER_WORKERS", "9")
    args = build_parser().parse_args(["worker", "--config", str(config), "--workers", "11"])
    settings = settings_from(args)
    assert (settings.broker_url, settings.prefetch, settings.workers) == ("redis://file/0", 7, 11)


def test_the_config_file_may_be_json_and_named_by_the_environment(tmp_path, monkeypatch):
    config = tmp_path / "worker.json"
    config.write_text(json.dumps({"host": "from-json", "state_dir": str(tmp_path)}))
    monkeypatch.setenv("KVMWORKER_CONFIG", str(config))
    assert Settings().host == "from-json"


def test_settings_made_in_code_take_arguments_over_variables_over_old_variables_over_the_config_file(
    tmp_path, monkeypatch
):
    config = tmp_path / "worker.toml"
    config.write_text('prefetch = 3\nworkers = 5\nmax_migrations = 4\nstorage_pool = "from-file"\n')
    monkeypatch.setenv("KVMWORKER_CONFIG", str(config))
    monkeypatch.setenv("KVMWORKER_PREFETCH", "7")
    monkeypatch.setenv("KVMWORKER_WORKERS", "9")
    monkeypatch.setenv("KVMWORKER_BROKER_URL", "redis://old-variable/0")
    monkeypatch.setenv("KVMWORKER_PHYSICAL_INTERFACES", '["eth0", "eth1"]')
    monkeypatch.setenv("KVMWORKER_PUBLISH_CONFIRMS", "false")
    settings = Settings(prefetch=11, state_dir=tmp_path)
    assert (settings.prefetch, settings.workers, settings.max_migrations, settings.storage_pool) == (
        11,
        9,
        4,
        "from-file",
    )
    assert (settings.broker, settings.physical_interfaces, settings.publish_confirms) == (
        "redis://old-variable/0",
        ["eth0", "eth1"],
        False,
    )
    monkeypatch.setenv("KVMWORKER_BROKER", "redis://new-variable/0")
    assert Settings().broker == "redis://new-variable/0", "the new variable wins over the old one"
    assert Settings(broker_url="redis://argument/0").broker == "redis://argument/0", "an argument wins, old name too"
    monkeypatch.setenv("KVMWORKER_WORKERS", "0")
    with pytest.raises(ValueError, match="workers"):
        Settings()


def test_a_misspelt_setting_in_the_config_file_is_an_error_not_ignored(tmp_path):
    config = tmp_path / "worker.toml"
    config.write_text("prefecth = 3\n")
    with pytest.raises(ValueError, match="prefecth"):
        Settings(config_file=config)


def test_the_broker_flag_sets_the_broker_setting_still_readable_as_broker_url():
    args = build_parser().parse_args(["call", "h1", "SystemHandler", "ping", "--broker", "redis://kvt/0"])
    assert settings_from(args).broker == settings_from(args).broker_url == "redis://kvt/0"


def test_kvmworker_call_prints_the_reply_and_exits_by_its_code(running_worker, host, broker_url):
    if broker_url.startswith("memory"):
        pytest.skip("memory:// lives inside one process; the CLI runs in another")
    cmd = [sys.executable, "-m", "kvmworker", "call", host, "SystemHandler", "ping", "--broker", broker_url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"]["host"] == host
    bad = subprocess.run([*cmd[:6], "nope", "--broker", broker_url], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 20003


def test_the_committed_schemas_are_what_kvmworker_schema_writes_now():
    wanted = build_schemas(worker_commands())
    committed = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.json")}
    stale = sorted(name for name, schema in wanted.items() if committed.get(name) != render(schema))
    extra = sorted(set(committed) - set(wanted))
    assert (stale, extra) == ([], []), "schemas/ is stale: run `kvmworker schema` and commit the result"


def test_every_command_has_a_schema_with_its_title():
    schemas = build_schemas(worker_commands())
    assert schemas["SystemHandler.ping.json"]["title"] == "SystemHandler.ping"
    assert {"envelope.json", "reply.json"} <= set(schemas)
