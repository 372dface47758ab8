"""``kvmworker replay``: a recorded command sent again reproduces its reply and effect; --dry-run changes nothing."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmworker.cli import main
from kvmworker.cli.replaying import ProgressBar, describe, side_by_side
from kvmworker.client import Client
from kvmworker.journal.entry import Entry
from kvmworker.journal.replay import Ignore, NotReplayable, differences, replay_envelope
from kvmworker.protocol.codes import Code
from kvmworker.runtime import RunningWorker, start_worker
from kvmworker.settings import Settings
from tests.conftest import unique
from tests.journal.effects import EffectsHandler

pytestmark = pytest.mark.broker


@dataclass
class Recorded:
    worker: RunningWorker
    settings: Settings
    effects: Path
    client: Client

    def touch(self, name: str) -> str:
        msg_id = str(uuid.uuid4())
        reply = self.client.call(self.settings.host, "EffectsHandler", "touch", {"name": name}, msg_id=msg_id)
        assert reply.code == Code.OK
        return msg_id

    def replay(self, *args: str) -> int:
        return main(
            ["replay", *args, "--state-dir", str(self.settings.state_dir), "--broker", self.settings.broker_url]
        )


@pytest.fixture
def recorded(amqp_url: str, tmp_path: Path) -> Iterator[Recorded]:
    effects = tmp_path / "effects"
    effects.mkdir()
    settings = Settings(host=unique("kvt-jp-"), broker_url=amqp_url, state_dir=tmp_path / "state")
    running = start_worker(settings, extra_handlers=[EffectsHandler(effects)])
    assert running.worker.connected.wait(15)
    with Client(amqp_url) as client:
        yield Recorded(running, settings, effects, client)
    running.stop(timeout=10)


def test_replaying_a_recorded_create_reproduces_its_reply_and_its_effect(recorded, capsys):
    msg_id = recorded.touch("r1")
    (recorded.effects / "r1").unlink()  # undone behind the worker's back
    assert recorded.replay(msg_id, "--yes") == 0
    out = capsys.readouterr().out
    assert "same reply" in out
    assert (recorded.effects / "r1").exists()


def test_a_dry_run_replay_shows_the_plan_and_changes_nothing(recorded, capsys):
    msg_id = recorded.touch("r2")
    (recorded.effects / "r2").unlink()
    assert recorded.replay(msg_id, "--dry-run") == 1  # the plan is not the recorded reply
    out = capsys.readouterr().out
    assert '"create r2"' in out
    assert "! data.dry_run" in out
    assert not (recorded.effects / "r2").exists()


def test_replay_without_yes_and_without_a_terminal_sends_nothing(recorded, capsys, monkeypatch):
    msg_id = recorded.touch("r3")
    (recorded.effects / "r3").unlink()
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert recorded.replay(msg_id) == 1
    assert "give --yes" in capsys.readouterr().err
    assert not (recorded.effects / "r3").exists()


def test_an_exported_file_replays_every_command_in_it(recorded, capsys, tmp_path):
    for name in ("f1", "f2"):
        recorded.touch(name)
        (recorded.effects / name).unlink()
    export = tmp_path / "export.jsonl"
    state = str(recorded.settings.state_dir)
    assert main(["journal", "export", "--handler", "EffectsHandler", "--out", str(export), "--state-dir", state]) == 0
    assert len(export.read_text().splitlines()) == 2
    assert main(["replay", "--file", str(export), "--yes", "--broker", recorded.settings.broker_url]) == 0
    assert "2 replayed: 2 same reply" in capsys.readouterr().out
    assert (recorded.effects / "f1").exists() and (recorded.effects / "f2").exists()


def test_an_entry_whose_secrets_were_masked_is_not_replayable():
    entry = Entry.from_dict(
        {"msg_id": "m", "received_at": 0, "host": "h", "handler": "UserHandler", "command": "login",
         "dry_run": False, "state": "answered", "code": 0, "duration_ms": 1, "answered_at": 1, "redelivered": False,
         "envelope": {"handler": "UserHandler", "command": "login", "data": {"username": "u", "password": "***"}},
         "properties": {}, "reply": {"code": 0, "msg": "成功", "data": None}}
    )  # fmt: skip
    with pytest.raises(NotReplayable, match="masked"):
        replay_envelope(entry, dry_run=False)


def test_differences_name_the_path_of_every_changed_leaf():
    old = {"code": 0, "data": {"name": "a", "ports": [1, 2], "gone": 1}}
    new = {"code": 0, "data": {"name": "b", "ports": [1, 3], "added": 2}}
    assert [d.path for d in differences(old, new)] == ["data.added", "data.gone", "data.name", "data.ports[1]"]


def test_side_by_side_marks_the_lines_that_differ():
    lines = side_by_side({"code": 0, "data": {"name": "a"}}, {"code": 0, "data": {"name": "b"}}, 80)
    changed = [line for line in lines if " ! " in line]
    assert len(changed) == 1 and '"a"' in changed[0] and '"b"' in changed[0]


def test_the_progress_bar_draws_in_place_on_a_terminal_and_stays_silent_elsewhere():
    shown, silent = io.StringIO(), io.StringIO()
    for out, enabled in ((shown, True), (silent, False)):
        bar = ProgressBar(4, out, enabled=enabled, width=8)
        bar.update(2)
        bar.finish()
    assert shown.getvalue() == "\r[####....] 2/4\n"
    assert silent.getvalue() == ""


def test_journal_show_prints_everything_recorded_about_a_msg_id(recorded, capsys):
    msg_id = recorded.touch("s1")
    assert main(["journal", "show", msg_id[:13], "--state-dir", str(recorded.settings.state_dir)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["msg_id"] == msg_id
    assert shown["envelope"]["data"] == {"name": "s1"}
    assert shown["reply"]["data"] == {"file": "s1", "created": True}
    assert shown["properties"]["reply_to"].startswith("kvmworker.reply.")
    assert shown["deliveries"][0]["answered"] == "executed"


def test_ignore_patterns_name_keys_at_any_depth_or_dotted_paths_from_the_top():
    ignore = Ignore(["run", "data.ports.name", "data.*.mtu"], defaults=False)
    assert [p for p in ("data.run", "data.x.run", "data.runs") if ignore(p)] == ["data.run", "data.x.run"]
    assert ignore("data.ports[3].name") and not ignore("data.ports[3].mac")
    assert ignore("data.eth0.mtu") and not ignore("mtu")
    assert not ignore("data.uptime")
    volatile = Ignore()
    assert all(volatile(p) for p in ("data.uptime", "data.vm.started_at", "data.duration_ms", "data.ts"))
    assert not volatile("data.name")


def test_the_confirmation_names_the_real_command_its_origin_and_its_sender():
    entry = Entry.from_dict(
        {"msg_id": "m1", "received_at": 0, "host": "kvm-7", "handler": None, "command": None, "dry_run": False,
         "state": "refused", "code": 20004, "duration_ms": 0, "answered_at": 0, "redelivered": False,
         "envelope": {"handler": "VmHandler", "command": "destroy", "data": {"name": "db1"}, "principal": "erin"},
         "properties": {"reply_to": "q1", "headers": {}}, "reply": {"code": 20004, "msg": "认证失败", "data": None}}
    )  # fmt: skip
    text = describe(entry, None)
    assert "m1  VmHandler.destroy → kvm-7" in text
    assert 'data: {"name": "db1"}' in text
    assert "sender: bridge user erin, unsigned (no signature header), reply_to q1" in text
    assert "WARNING: refused by the worker with 20004" in text
