"""One name per setting: flag ``--broker``, variable ``KVMWORKER_BROKER``, file key ``broker``; old spellings
(``KVMWORKER_BROKER_URL``, ``broker_url``, ``users_file``) still accepted, the new name winning.

Which broker a ``call`` used is read from its error: each source names an unreachable port of its own.
"""

from __future__ import annotations

import argparse

import pytest

from kvmworker.options import OLD_NAMES, OPTIONS
from kvmworker.settings import Settings
from tests.support.cli import assert_one_line_error, clean_env, kvmworker


def broker(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def used_port(*args: str, env: dict[str, str] | None = None) -> str:
    line = assert_one_line_error(kvmworker("call", "kvt-h", "SystemHandler", "ping", *args, env=env or clean_env()), 69)
    return line.split("127.0.0.1:")[1].split("/")[0]


@pytest.fixture
def config(tmp_path):
    def write(text: str):
        path = tmp_path / "kvmworker.toml"
        path.write_text(text)
        return str(path)

    return write


def test_the_variable_has_the_flag_s_name():
    assert used_port(env=clean_env(KVMWORKER_BROKER=broker(3))) == "3"


def test_the_old_variable_is_still_read_and_the_new_one_wins_over_it():
    assert used_port(env=clean_env(KVMWORKER_BROKER_URL=broker(4))) == "4"
    assert used_port(env=clean_env(KVMWORKER_BROKER_URL=broker(4), KVMWORKER_BROKER=broker(5))) == "5"


def test_the_file_key_has_the_flag_s_name_and_the_old_key_is_still_read(config):
    assert used_port("--config", config(f'broker = "{broker(6)}"\n')) == "6"
    assert used_port("--config", config(f'broker_url = "{broker(7)}"\n')) == "7"


def test_a_flag_wins_over_the_variable_which_wins_over_the_file(config):
    path = config(f'broker = "{broker(8)}"\n')
    env = clean_env(KVMWORKER_BROKER=broker(9), KVMWORKER_CONFIG=path)
    assert used_port(env=env) == "9"
    assert used_port("--broker", broker(10), env=env) == "10"
    assert used_port(env=clean_env(KVMWORKER_CONFIG=path)) == "8"


def test_the_users_file_is_named_users_everywhere_and_users_file_still_works(tmp_path, config):
    users = tmp_path / "users.json"
    added = kvmworker("users", "add", "alice", "--password-stdin", "--users", str(users), input="pw\n")
    assert added.returncode == 0, added.stderr
    for env, args in (
        (clean_env(KVMWORKER_USERS=str(users)), ()),
        (clean_env(KVMWORKER_USERS_FILE=str(users)), ()),
        (clean_env(), ("--config", config(f'users = "{users}"\n'))),
        (clean_env(), ("--config", config(f'users_file = "{users}"\n'))),
    ):
        listed = kvmworker("users", "list", *args, env=env)
        assert (listed.returncode, listed.stdout.split()[:1]) == (0, ["alice"]), (env, args, listed.stderr)


def test_a_hyphenated_file_key_spelled_exactly_like_the_flag_is_read(tmp_path, config):
    from kvmworker.journal.store import JournalStore, journal_path

    JournalStore(journal_path(tmp_path)).close()
    listed = kvmworker("journal", "list", "--config", config(f'state-dir = "{tmp_path}"\n'))
    assert listed.returncode == 0 and "(no entries)" in listed.stdout, listed.stderr


def test_every_setting_s_one_name_is_a_settings_field_of_the_same_kind():
    fields = Settings.model_fields
    assert set(OPTIONS) == set(fields)
    for name, option in OPTIONS.items():
        annotation = str(fields[name].annotation)
        assert (option.kind == "list") == ("list[" in annotation), name
        assert (option.kind == "flag") == (fields[name].annotation is bool), name
    assert set(OLD_NAMES.values()) <= set(OPTIONS)


def test_library_callers_may_still_use_the_old_argument_and_attribute_names(tmp_path):
    settings = Settings(host="kvt-h", broker_url="redis://kvt/0", users_file=tmp_path / "u", state_dir=tmp_path)
    assert (settings.broker, settings.broker_url) == ("redis://kvt/0", "redis://kvt/0")
    assert settings.users == settings.users_file == tmp_path / "u"
    assert settings.model_copy(update={"broker_url": "amqp://kvt//"}).broker == "amqp://kvt//"


def test_the_help_of_a_flag_names_its_variable():
    from kvmworker.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["worker"]
    text = sub.format_help()
    for flag in ("--broker", "--state-dir", "--workers"):
        assert flag in text
    compact = "".join(text.split())  # argparse wraps the help lines
    for variable in ("[KVMWORKER_BROKER]", "[KVMWORKER_STATE_DIR]", "[KVMWORKER_WORKERS]"):
        assert variable in compact
