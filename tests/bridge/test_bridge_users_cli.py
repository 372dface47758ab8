"""``kvmworker users``: add, list, remove; the file holds argon2 hashes, never a password, mode 0600."""

from __future__ import annotations

import io
import stat

from kvmworker.bridge.users import UsersFile
from kvmworker.cli import main


def _run(monkeypatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(list(argv))


def test_a_user_added_from_stdin_is_stored_as_an_argon2_hash(monkeypatch, tmp_path, capsys):
    path = tmp_path / "users"
    assert _run(monkeypatch, "users", "add", "alice", "--password-stdin", "--users", str(path), stdin="pw 1\n") == 0
    text = path.read_text()
    assert "alice:$argon2id$" in text and "pw 1" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert UsersFile(path).hasher.verify(UsersFile(path).hash_of("alice"), "pw 1")


def test_users_are_listed_and_removed(monkeypatch, tmp_path, capsys):
    path = str(tmp_path / "users")
    for name in ("bob", "alice"):
        _run(monkeypatch, "users", "add", name, "--password-stdin", "--users", path, stdin="x\n")
    capsys.readouterr()
    assert _run(monkeypatch, "users", "list", "--users", path) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["alice", "bob"]
    assert _run(monkeypatch, "users", "remove", "bob", "--users", path) == 0
    assert _run(monkeypatch, "users", "remove", "bob", "--users", path) == 1
    assert UsersFile(tmp_path / "users").names() == ["alice"]


def test_a_bad_username_or_an_empty_password_is_refused(monkeypatch, tmp_path):
    path = str(tmp_path / "users")
    assert _run(monkeypatch, "users", "add", "a b", "--password-stdin", "--users", path, stdin="x\n") == 64
    assert _run(monkeypatch, "users", "add", "alice", "--password-stdin", "--users", path, stdin="\n") == 64
