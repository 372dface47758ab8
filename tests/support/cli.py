"""``kvmworker`` as the operator runs it: the installed entry point, in a process of its own, in a clean environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import stop_process

KVMWORKER = str(Path(sys.executable).parent / "kvmworker")

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any KVMWORKER_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KVMWORKER_")}
    return env | extra


def kvmworker(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KVMWORKER, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        input=input,
        timeout=timeout,
        cwd=ROOT,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, exit_code: int, *words: str) -> str:
    """Exit ``exit_code``, no traceback, exactly one line on stderr that starts ``kvmworker: error:`` and says
    ``words``; returns that line."""
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kvmworker: error: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    assert done.returncode == exit_code, (done.returncode, lines[0])
    return lines[0]


@contextmanager
def serving(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """``kvmworker serve|bridge …`` until the test is done (SIGTERM); yields the process and its URL."""
    proc = subprocess.Popen(
        [KVMWORKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=ROOT,
    )
    try:
        url = None
        for line in proc.stdout:
            found = re.search(r"(http://[0-9.:\[\]]+)", line)
            if found:
                url = found.group(1)
                break
        assert url, f"{args[0]} did not announce its URL (exit {proc.poll()})"
        yield proc, url
    finally:
        stop_process(proc, 30)
