"""Dependencies point one way: every import of the package, read from its source (lazy imports inside functions
included; ``if TYPE_CHECKING:`` blocks are not imports at run time), held to the layer rules."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kvmworker"
SYSTEM_LIBRARIES = {"libvirt", "pyroute2", "psutil"}
WEB_AND_BROKER = {"kombu", "amqp", "redis", "starlette", "uvicorn", "httpx"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


class _Imports(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        assert node.level == 0, "the package imports absolutely"
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            self.found.add(full if full in MODULES else str(node.module))


@functools.cache
def imports_of(module: str) -> frozenset[str]:
    visitor = _Imports()
    visitor.visit(ast.parse(MODULES[module].read_text()))
    return frozenset(visitor.found)


def edges() -> Iterator[tuple[str, str]]:
    for module in MODULES:
        for imported in imports_of(module):
            yield module, imported


def within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(importers: tuple[str, ...], forbidden: set[str] | tuple[str, ...], allowed=()) -> list[str]:
    return sorted(
        f"{module} imports {imported}"
        for module, imported in edges()
        if within(module, *importers) and within(imported, *forbidden) and not within(imported, *allowed)
    )


def test_the_probe_sees_the_package_and_its_lazy_imports():
    assert "kvmworker.handlers.vm" in MODULES and "kvmworker.protocol.wire" in MODULES
    assert "kvmworker.journal.query" in imports_of("kvmworker.handlers.system")  # imported inside a function
    assert "kvmworker.dispatch.context" not in imports_of("kvmworker.api.vm")  # only under TYPE_CHECKING


def test_only_the_wiring_and_the_command_line_import_the_handlers():
    wiring = ("kvmworker.handlers", "kvmworker.app", "kvmworker.runtime", "kvmworker.cli")
    users = {module for module, imported in edges() if within(imported, "kvmworker.handlers")}
    assert sorted(m for m in users if not within(m, *wiring)) == []


def test_the_protocol_imports_nothing_else_of_the_package_and_no_broker_web_or_system_library():
    assert violations(("kvmworker.protocol",), ("kvmworker",), allowed=("kvmworker.protocol",)) == []
    assert violations(("kvmworker.protocol",), SYSTEM_LIBRARIES | WEB_AND_BROKER) == []


def test_the_api_reads_only_the_protocol_and_the_command_declarations():
    everything = ("kvmworker", *SYSTEM_LIBRARIES, *WEB_AND_BROKER)
    allowed = ("kvmworker.api", "kvmworker.protocol", "kvmworker.dispatch.commands")
    assert violations(("kvmworker.api",), everything, allowed) == []


def test_dispatch_knows_no_transport_bridge_or_handler():
    forbidden = ("kvmworker.transport", "kvmworker.bridge", "kvmworker.handlers", "kvmworker.client")
    assert violations(("kvmworker.dispatch",), (*forbidden, *WEB_AND_BROKER, *SYSTEM_LIBRARIES)) == []


@pytest.mark.parametrize("lower", ["kvmworker.netplane", "kvmworker.virt", "kvmworker.inventory"])
def test_what_the_handlers_use_knows_no_dispatch_transport_or_bridge(lower):
    upper = ("kvmworker.dispatch", "kvmworker.transport", "kvmworker.bridge", "kvmworker.journal", "kvmworker.trust")
    assert violations((lower,), (*upper, "kvmworker.app", "kvmworker.runtime", "kvmworker.client")) == []


def test_wire_names_come_from_the_protocol_and_the_trust_layer_does_not_reach_into_the_transport():
    assert violations(("kvmworker.trust",), ("kvmworker.transport",)) == []
    kombu_free = ("kvmworker.trust", "kvmworker.bridge.hosts", "kvmworker.cli.replaying", "kvmworker.cli.status")
    assert violations(kombu_free, ("kvmworker.transport.names",)) == []


def test_the_bridge_never_builds_a_worker():
    worker = ("kvmworker.app", "kvmworker.runtime", "kvmworker.netplane", "kvmworker.virt", "kvmworker.inventory")
    assert violations(("kvmworker.bridge",), (*worker, *SYSTEM_LIBRARIES)) == []
