"""The two-host harness itself: two session daemons of ``nobody`` migrate the test guest with plain virsh.

The proof that the ground the worker's migration tests stand on holds, without the worker.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.vm.guest import guest_image
from tests.vm.private_libvirtd import missing_tools
from tests.vm.two_libvirtd import POWEROFF_LINE, two_hosts

pytestmark = pytest.mark.skipif(missing_tools() is not None, reason=str(missing_tools()))


def test_virsh_migrates_the_guest_from_a_to_b_and_its_console_answers_on_b() -> None:
    image = guest_image()
    with two_hosts("kvt-vm") as hosts:
        hosts.run_guest(hosts.a, "kvt-mv", image)
        done = subprocess.run(
            ["virsh", "-c", hosts.a.uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", "kvt-mv",
             hosts.b.peer_uri, "tcp://127.0.0.1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert hosts.where("kvt-mv") == {hosts.a.name: None, hosts.b.name: "running"}
        hosts.b.virsh("shutdown", "kvt-mv")  # the power button reaches the guest where it now runs
        hosts.wait_for_line("kvt-mv", POWEROFF_LINE, timeout=60)
