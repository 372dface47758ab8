"""``kvmworker journal list|show|export`` over a journal the real middleware wrote."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from kvmworker.cli import main
from kvmworker.cli.journal import parse_when
from tests.journal.conftest import new_id


@pytest.fixture
def filled(wired):
    ids = {
        "bump": new_id(),
        "invalid": new_id(),
        "touch": new_id(),
    }
    wired.send("EffectsHandler", "bump", {"name": "c1"}, msg_id=ids["bump"])
    wired.send("EffectsHandler", "bump", {"name": "NOT VALID"}, msg_id=ids["invalid"])
    wired.send("EffectsHandler", "touch", {"name": "c2"}, msg_id=ids["touch"], dry_run=True)
    wired.send("EffectsHandler", "bump", {"name": "c1"}, msg_id=ids["bump"], redelivered=True)
    return wired, ids


def journal(wired, *args: str) -> int:
    return main(["journal", *args, "--state-dir", str(wired.settings.state_dir)])


def test_list_prints_a_table_newest_first_with_flags_for_redelivery_and_dry_run(filled, capsys):
    wired, ids = filled
    assert journal(wired, "list") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["RECEIVED", "(UTC)", "MSG_ID"]
    assert [row.split()[2] for row in rows] == [ids["touch"], ids["invalid"], ids["bump"]]
    bump_row = rows[2].split()
    assert (bump_row[3], bump_row[4], bump_row[6]) == ("EffectsHandler.bump", "0", "answered")
    assert bump_row[-2:] == ["2", "R"]  # two deliveries, one of them redelivered
    assert rows[0].split()[-1] == "D"


def test_list_json_filters_by_code_and_text(filled, capsys):
    wired, ids = filled
    assert journal(wired, "list", "--json", "--code", "30006") == 0
    assert [e["msg_id"] for e in json.loads(capsys.readouterr().out)] == [ids["invalid"]]
    assert journal(wired, "list", "--json", "--text", '"c2"') == 0
    assert [e["msg_id"] for e in json.loads(capsys.readouterr().out)] == [ids["touch"]]
    assert journal(wired, "list", "--json", "--since", "1h", "--command", "touch") == 0
    assert [e["msg_id"] for e in json.loads(capsys.readouterr().out)] == [ids["touch"]]
    assert journal(wired, "list", "--json", "--until", "1h") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_export_writes_json_lines_oldest_first(filled, capsys):
    wired, ids = filled
    assert journal(wired, "export") == 0
    exported = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["msg_id"] for e in exported] == [ids["bump"], ids["invalid"], ids["touch"]]
    assert exported[0]["reply"]["code"] == 0


def test_an_unknown_msg_id_and_a_missing_journal_are_reported_without_a_traceback(filled, capsys, tmp_path):
    wired, _ = filled
    assert journal(wired, "show", "ffffffff") == 64  # EX_USAGE, one line (README "Command line")
    assert "no entry" in capsys.readouterr().err
    assert main(["journal", "list", "--state-dir", str(tmp_path / "nowhere")]) == 64
    assert "no journal" in capsys.readouterr().err


def test_times_are_read_as_ages_epochs_or_iso_in_utc():
    now = time.time()
    assert parse_when("90s", now) == pytest.approx(now - 90)
    assert parse_when("2h", now) == pytest.approx(now - 7200)
    assert parse_when("1700000000") == 1700000000
    assert parse_when("2026-11-27T10:00") == datetime(2026, 11, 27, 10, tzinfo=UTC).timestamp()
    assert parse_when("2026-11-27T10:00+01:00") == datetime(2026, 11, 27, 9, tzinfo=UTC).timestamp()
