"""``ping`` says the host's name as the kernel has it now, although it does not ask the kernel on every ping."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a UTS namespace")

# Runs in a UTS namespace of its own: the name it sets is seen by nothing else on this machine.
SCRIPT = """
import json, socket, sys, time
from kvmworker.dispatch.context import Context
from kvmworker.handlers.system import SystemHandler

first, second = sys.argv[1], sys.argv[2]
socket.sethostname(first)
handler = SystemHandler("kvthost", catalogue=dict)
ctx = Context(msg_id="m")
names = [handler.ping(None, ctx)["hostname"]]
socket.sethostname(second)
time.sleep(1.2)
names.append(handler.ping(None, ctx)["hostname"])
print(json.dumps(names))
"""


def test_a_renamed_host_answers_ping_with_its_new_name_within_a_second():
    first, second = f"kvt{uuid.uuid4().hex[:8]}", f"kvt{uuid.uuid4().hex[:8]}"
    ran = subprocess.run(
        ["unshare", "--uts", sys.executable, "-c", SCRIPT, first, second],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ran.returncode != 0 and "unshare failed" in ran.stderr:
        pytest.skip(f"no UTS namespace here: {ran.stderr.strip()}")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == [first, second]
