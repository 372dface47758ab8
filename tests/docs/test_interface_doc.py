"""docs/interface.md and the README's handler table name every handler, command and return code the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmworker.api.catalogue import bridge_commands
from kvmworker.app import build_registry
from kvmworker.protocol.codes import Code
from kvmworker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INTERFACE = ROOT / "docs" / "interface.md"
README = ROOT / "README.md"


def catalogue(state_dir: Path) -> dict[str, set[str]]:
    """Every handler and command the worker registers, plus the bridge's own UserHandler."""
    handlers: dict[str, set[str]] = {}
    for bound in build_registry(Settings(host="kvt-docs", state_dir=state_dir)).commands():
        handlers.setdefault(bound.handler, set()).add(bound.name)
    for declared in bridge_commands():
        handlers.setdefault(declared.handler, set()).add(declared.name)
    return handlers


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict[str, set[str]]:
    handlers = catalogue(tmp_path_factory.mktemp("state"))
    assert {"NetworkHandler", "VmHandler", "SystemHandler", "UserHandler"} <= set(handlers)
    return handlers


def sections(text: str) -> dict[str, str]:
    """``### Handler`` → the text up to the next heading of that level or above."""
    parts = re.split(r"^(#{1,3} .*)$", text, flags=re.MULTILINE)
    return {parts[i].lstrip("#").strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def named_commands(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", text))


def test_every_registered_handler_has_a_section_in_the_interface_document_naming_each_of_its_commands(registered):
    doc = sections(INTERFACE.read_text())
    for handler, commands in registered.items():
        assert handler in doc, f"docs/interface.md has no '### {handler}' section"
        missing = commands - named_commands(doc[handler])
        assert not missing, f"docs/interface.md, {handler}: no {sorted(missing)}"


def test_every_registered_handler_has_a_row_in_the_readme_table_with_exactly_its_commands(registered):
    rows = {}
    for line in README.read_text().splitlines():
        found = re.match(r"\| `(\w+Handler)`[^|]*\| ([^|]*) \|", line)
        if found:
            rows[found.group(1)] = named_commands(found.group(2))
    assert set(rows) == set(registered), "the README's handler table and the registry name different handlers"
    for handler, commands in registered.items():
        assert rows[handler] == commands, f"README, {handler}: the table says {sorted(rows[handler])}"


def test_every_return_code_is_in_the_interface_document_with_its_exact_text():
    tables = INTERFACE.read_text()
    for code in Code:
        assert f"| {int(code)} | {code.msg} |" in tables, f"docs/interface.md: no row for {int(code)} {code.msg}"


def test_what_the_interface_document_marks_planned_is_really_not_registered(registered):
    """A planned command that gets built must lose its "planned" mark (and the line above then checks it)."""
    doc = INTERFACE.read_text()
    planned = set()
    for paragraph in doc.split("\n\n"):
        if paragraph.startswith("**Planned**"):
            planned |= named_commands(paragraph)
    every_command = set().union(*registered.values())
    assert "migrate" in registered["VmHandler"] and "migrate" not in planned  # the last planned one, now built
    assert not planned & every_command, f"marked planned but registered: {sorted(planned & every_command)}"
