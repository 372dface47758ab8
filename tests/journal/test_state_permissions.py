"""The state directory of a real ``kvmworker worker``: 0700, its files 0600 even under umask 0, and nobody else
on the host can read the journal; what an older version left wider is tightened at start, with a warning."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.journal.store import JournalStore, journal_path
from kvmworker.protocol.codes import Code
from kvmworker.statefiles import SharedDirectory, secure_state_dir
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import unique
from tests.support.processes import stop_process

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own tmp is 0700, which would hide the state dir anyway)."""
    if os.geteuid() != 0:
        pytest.skip("reading as another user (setpriv --reuid) needs root")
    parent = Path(tempfile.mkdtemp(prefix="kvt-perm-"))
    parent.chmod(0o755)
    yield parent
    subprocess.run(["rm", "-rf", str(parent)], check=False)


class Worker:
    def __init__(self, amqp_url: str, state_dir: Path, log: Path):
        self.host = unique("kvt-jperm-")
        self.url = amqp_url
        cmd = [sys.executable, "-m", "kvmworker", "worker", "--host", self.host, "--broker", amqp_url]
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                [*cmd, "--state-dir", str(state_dir)],
                cwd=ROOT,
                stderr=err,
                stdout=subprocess.DEVNULL,
                preexec_fn=lambda: os.umask(0),  # the most permissive umask: the modes must not depend on it
            )
        self.log = log

    def ping(self) -> None:
        with Client(self.url) as client:
            reply = client.call(self.host, "SystemHandler", "ping", {}, timeout=60)
        assert reply.code == Code.OK, self.log.read_text()

    def stop(self) -> None:
        stop_process(self.proc, 20)
        delete_host_queue(self.url, self.host)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def as_nobody(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, errors="replace", timeout=30, check=False)


def test_a_fresh_state_dir_is_0700_with_files_0600_and_nobody_else_can_read_the_journal(amqp_url, open_parent):
    state = open_parent / "state"
    control = open_parent / "control"
    control.write_text("readable")
    control.chmod(0o644)
    assert as_nobody("cat", str(control)).returncode == 0  # the check below can fail: nobody reads what it may
    worker = Worker(amqp_url, state, open_parent / "worker.log")
    try:
        worker.ping()
        files = sorted(p.name for p in state.iterdir())
        assert {"journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"} <= set(files), files
        assert mode(state) == 0o700
        assert {name: mode(state / name) for name in files} == dict.fromkeys(files, 0o600)
        for name in files:
            denied = as_nobody("cat", str(state / name))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert as_nobody("ls", str(state)).returncode != 0
    finally:
        worker.stop()


def test_a_state_dir_left_readable_by_an_older_version_is_tightened_at_start_with_a_warning(amqp_url, open_parent):
    state = open_parent / "state"
    state.mkdir(mode=0o755)
    JournalStore(journal_path(state)).close()
    (state / "journal.sqlite").chmod(0o644)
    (state / "networks.sqlite").write_bytes(b"")
    (state / "networks.sqlite").chmod(0o664)
    os.chmod(state, 0o755)
    assert as_nobody("cat", str(state / "journal.sqlite")).returncode == 0  # the audit's finding, reproduced
    worker = Worker(amqp_url, state, open_parent / "worker.log")
    try:
        worker.ping()
        assert mode(state) == 0o700
        assert mode(state / "journal.sqlite") == 0o600
        assert mode(state / "networks.sqlite") == 0o600
        assert as_nobody("cat", str(state / "journal.sqlite")).returncode != 0
        log = worker.log.read_text()
        assert f"{state} was readable by others (mode 755): now 700" in log
        assert f"{state / 'journal.sqlite'} was readable by others (mode 644): now 600" in log
    finally:
        worker.stop()


def test_a_shared_sticky_directory_is_refused_as_state_dir_and_left_as_it_was(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(SharedDirectory, match="sticky"):
        secure_state_dir(shared)
    assert mode(shared) == 0o1777
