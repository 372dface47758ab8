"""``--help`` stays light (no libvirt, pyroute2, kombu, uvicorn or pydantic-settings is imported to print it: the
time is measured in bench/cli.py), and the completion script completes sub-commands and flags in a real bash."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.support.cli import KVMWORKER, ROOT, clean_env, kvmworker

HEAVY = ("libvirt", "pyroute2", "kombu", "uvicorn", "starlette", "pydantic_settings", "pydantic")
LIGHT_COMMANDS = (
    "",
    "worker",
    "call",
    "status",
    "serve",
    "bridge",
    "users",
    "journal",
    "replay",
    "schema",
    "completion",
)


def imported_modules(*args: str) -> set[str]:
    """The top-level modules ``kvmworker ARGS`` imports, as ``python -X importtime`` reports them."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", KVMWORKER, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {m.group(1).split(".")[0] for m in re.finditer(r"\|\s+([\w.]+)\s*$", done.stderr, re.M)}


@pytest.mark.parametrize("command", LIGHT_COMMANDS, ids=lambda c: c or "top")
def test_help_imports_none_of_the_heavy_libraries(command):
    modules = imported_modules(*([command] if command else []), "--help")
    assert "kvmworker" in modules, "the probe must see the package's own imports"
    assert sorted(modules & set(HEAVY)) == []


def test_the_top_level_help_lists_every_sub_command_with_its_summary():
    from kvmworker.cli import COMMANDS

    done = kvmworker("--help")
    assert done.returncode == 0
    for name, summary in COMMANDS.items():
        assert name in done.stdout
        assert " ".join(summary.split()[:3]) in " ".join(done.stdout.split())


def test_the_summary_in_the_table_is_the_one_each_module_registers():
    import argparse

    from kvmworker.cli import COMMANDS, build_parser

    full = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in full._choices_actions}
    assert helps == COMMANDS


def complete(script: str, words: str) -> list[str]:
    """What bash offers for the last word of ``words`` (an empty last word when ``words`` ends with a space)."""
    parts = words.split(" ")
    program = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(repr(p) for p in parts)}); COMP_CWORD={len(parts) - 1}\n"
        '_kvmworker; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_sub_commands_their_actions_and_their_flags():
    done = kvmworker("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert complete(script, "kvmworker jou") == ["journal"]
    assert sorted(complete(script, "kvmworker journal ")) == ["export", "list", "show"]
    assert complete(script, "kvmworker call --bro") == ["--broker"]
    assert complete(script, "kvmworker users add --pass") == ["--password-stdin"]
    assert "--json" in complete(script, "kvmworker status --")
    assert "--state-dir" in complete(script, "kvmworker journal list --st")


def test_zsh_completion_is_the_bash_one_behind_bashcompinit():
    bash, zsh = kvmworker("completion", "bash").stdout, kvmworker("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -o default -F _kvmworker kvmworker" in zsh
    assert zsh.split("_kvmworker_children()", 1)[1] == bash.split("_kvmworker_children()", 1)[1]
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed here: its script was compared with the bash one only")
    loaded = subprocess.run(["zsh", "-c", zsh + "\n(( $+functions[_kvmworker] ))"], capture_output=True, timeout=30)
    assert loaded.returncode == 0, loaded.stderr
