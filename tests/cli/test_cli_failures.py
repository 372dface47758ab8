"""Every way a first-hour user gets the command line wrong ends as one line on stderr and a documented exit code.

0 success, 1 the worker answered an error, 2 outcome unknown, 64 usage, 69 broker or bridge unreachable,
71 the system refused (a port in use), 141 the reader of stdout went away. All run the installed ``kvmworker``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from kvmworker import __version__
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.cli import KVMWORKER, ROOT, assert_one_line_error, clean_env, kvmworker

NOBODY_BROKER = "amqp://guest:s3cret@127.0.0.1:1//"  # nothing listens on port 1


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_bad_json_in_data_is_a_usage_error_that_says_where_it_broke():
    done = kvmworker("call", "kvt-h", "SystemHandler", "ping", "--data", "{bad", "--broker", NOBODY_BROKER)
    assert_one_line_error(done, 64, "--data", "not JSON", "char 1")


def test_data_that_is_json_but_not_an_object_is_a_usage_error():
    done = kvmworker("call", "kvt-h", "SystemHandler", "ping", "--data", "[1, 2]", "--broker", NOBODY_BROKER)
    assert_one_line_error(done, 64, "--data", "JSON object")


def test_a_negative_timeout_is_a_usage_error_naming_the_flag():
    done = kvmworker("call", "kvt-h", "SystemHandler", "ping", "--timeout", "-1", "--broker", NOBODY_BROKER)
    assert_one_line_error(done, 64, "--timeout -1", "greater than 0")


def test_an_unknown_sub_command_or_a_missing_argument_is_a_usage_error():
    assert_one_line_error(kvmworker("nonsense"), 64, "invalid choice", "nonsense")
    assert_one_line_error(kvmworker(), 64, "required")
    assert_one_line_error(kvmworker("call", "kvt-h"), 64, "HANDLER", "kvmworker call --help")
    assert_one_line_error(kvmworker("worker", "--no-such-flag"), 64, "--no-such-flag")


def test_version_prints_the_package_version():
    done = kvmworker("--version")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, f"kvmworker {__version__}", "")


def test_call_on_the_default_memory_broker_refuses_at_once_and_says_how_to_reach_a_running_serve():
    started = time.monotonic()
    done = kvmworker("call", "kvt-h", "SystemHandler", "ping")
    line = assert_one_line_error(done, 64, "memory://", "one process", "--broker", "--url http://")
    assert time.monotonic() - started < 20, "it must not wait the 30 s reply timeout first"
    assert done.stdout == "", line


def test_replay_on_the_default_memory_broker_gives_the_same_hint(tmp_path):
    export = tmp_path / "export.jsonl"
    envelope = {
        "handler": "SystemHandler",
        "command": "ping",
        "data": {},
        "msg_id": "5a0f3e57-2c41-4b7e-9d0e-0c1a2b3c4d5e",
    }
    entry = {
        "msg_id": envelope["msg_id"],
        "received_at": 1.0,
        "host": "kvt-h",
        "handler": "SystemHandler",
        "command": "ping",
        "dry_run": False,
        "state": "answered",
        "code": 0,
        "envelope": envelope,
        "reply": {"code": 0, "msg": "ok", "data": {}},
    }
    export.write_text(json.dumps(entry) + "\n")
    done = kvmworker("replay", "--file", str(export), "--yes", "--state-dir", str(tmp_path))
    assert_one_line_error(done, 64, "replay", "memory://", "--url")


def test_an_unreachable_broker_exits_69_naming_it_without_its_password():
    line = assert_one_line_error(
        kvmworker("call", "kvt-h", "SystemHandler", "ping", "--broker", NOBODY_BROKER), 69, "127.0.0.1:1"
    )
    assert "s3cret" not in line


def test_a_port_in_use_is_one_line_for_serve_and_for_bridge(busy_port, tmp_path):
    serve = kvmworker("serve", "--port", str(busy_port), "--state-dir", str(tmp_path), "--host", unique("kvt-"))
    assert_one_line_error(serve, 71, f"127.0.0.1:{busy_port}", "in use", "--port")
    bridge = kvmworker("bridge", "--port", str(busy_port), "--broker", NOBODY_BROKER)
    assert_one_line_error(bridge, 71, f"127.0.0.1:{busy_port}", "in use", "--port")


def test_a_config_file_key_spelled_like_the_flag_is_read(tmp_path):
    config = tmp_path / "kvmworker.toml"
    config.write_text('broker = "amqp://guest:guest@127.0.0.1:2//"\ntimeout = 3\n')
    done = kvmworker("call", "kvt-h", "SystemHandler", "ping", "--config", str(config))
    assert_one_line_error(done, 69, "127.0.0.1:2")


def test_an_unknown_config_key_is_a_usage_error_that_suggests_the_right_one(tmp_path):
    config = tmp_path / "kvmworker.toml"
    config.write_text('brokr = "amqp://localhost//"\n')
    done = kvmworker("call", "kvt-h", "SystemHandler", "ping", "--config", str(config))
    assert_one_line_error(done, 64, "unknown key 'brokr'", "did you mean 'broker'", str(config))


def test_a_bad_config_value_names_the_file_and_the_key(tmp_path):
    config = tmp_path / "kvmworker.toml"
    config.write_text('workers = "abc"\n')
    done = kvmworker("worker", "--config", str(config), "--state-dir", str(tmp_path), "--broker", NOBODY_BROKER)
    assert_one_line_error(done, 64, f"workers in {config}", "'abc'", "integer")


def test_a_config_file_that_is_not_toml_or_not_there_is_a_usage_error(tmp_path):
    config = tmp_path / "kvmworker.toml"
    config.write_text("broker = \n")
    assert_one_line_error(kvmworker("call", "h", "S", "c", "--config", str(config)), 64, "not valid TOML")
    missing = tmp_path / "missing.toml"
    assert_one_line_error(kvmworker("call", "h", "S", "c", "--config", str(missing)), 64, str(missing))


def test_a_bad_worker_only_variable_breaks_neither_journal_list_nor_call(tmp_path):
    from kvmworker.journal.store import JournalStore, journal_path

    JournalStore(journal_path(tmp_path)).close()
    env = clean_env(KVMWORKER_WORKERS="abc", KVMWORKER_PREFETCH="-5")
    listing = kvmworker("journal", "list", "--state-dir", str(tmp_path), env=env)
    assert (listing.returncode, listing.stderr) == (0, ""), listing.stderr
    assert "(no entries)" in listing.stdout
    call = kvmworker("call", "kvt-h", "SystemHandler", "ping", "--broker", NOBODY_BROKER, env=env)
    assert_one_line_error(call, 69, "cannot reach the broker")


def test_a_bad_variable_for_a_setting_the_command_uses_names_the_variable(tmp_path):
    env = clean_env(KVMWORKER_WORKERS="abc")
    done = kvmworker("worker", "--state-dir", str(tmp_path), "--broker", NOBODY_BROKER, env=env)
    assert_one_line_error(done, 64, "KVMWORKER_WORKERS=abc", "integer")


def test_schema_into_a_pipe_whose_reader_has_gone_exits_quietly(tmp_path):
    """``kvmworker schema | head -1``: head may close the pipe before the next write; here it is closed before
    the first one, so that the outcome does not depend on timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [KVMWORKER, "schema", "--out", str(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=ROOT,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_command_nobody_answers_exits_2_with_the_unknown_outcome_reply():
    url = require_broker("amqp", AMQP_URL)
    done = kvmworker("call", unique("kvt-nobody-"), "SystemHandler", "ping", "--broker", url, "--timeout", "0.5")
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["code"] == -1


def test_the_memory_refusal_does_not_stop_a_call_made_inside_the_process_that_runs_the_worker(tmp_path, capsys):
    """In-process (a test, an embedding program) memory:// does reach the worker: only a lonely process is refused."""
    from kvmworker.cli import main
    from kvmworker.runtime import start_worker
    from kvmworker.settings import Settings

    host = unique("kvt-mem-")
    settings = Settings(host=host, broker="memory://", state_dir=tmp_path, libvirt_uri="test:///default")
    running = start_worker(settings)
    try:
        assert running.worker.connected.wait(15)
        assert main(["call", host, "SystemHandler", "ping", "--broker", "memory://"]) == 0
        assert json.loads(capsys.readouterr().out)["data"]["host"] == host
    finally:
        running.stop(10)


def test_replay_and_journal_usage_errors_are_one_line_with_exit_64(tmp_path):
    state = str(tmp_path / "state")
    neither = kvmworker("replay", "--state-dir", state, "--broker", AMQP_URL)
    assert_one_line_error(neither, 64, "MSG_IDs or --file")
    no_journal = kvmworker("journal", "list", "--state-dir", state)
    assert_one_line_error(no_journal, 64, "no journal at")
    unknown = kvmworker("journal", "show", "kvt-nope", "--state-dir", state)
    assert_one_line_error(unknown, 64)
