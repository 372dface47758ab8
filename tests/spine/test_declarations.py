"""Commands are declared once (``kvmworker.api``), readable without building a worker, and the registry refuses a
handler whose methods and declarations disagree."""

from __future__ import annotations

import re
import subprocess
import sys
from abc import abstractmethod
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from kvmworker.api.catalogue import bridge_commands, worker_commands
from kvmworker.app import build_registry
from kvmworker.dispatch.commands import DeclarationError, HandlerRegistry, Plan, command
from kvmworker.settings import Settings
from tests.conftest import AMQP_URL, require_broker
from tests.support.cli import KVMWORKER, ROOT, clean_env
from tests.support.processes import stop_process

SYSTEM_LIBRARIES = {"libvirt", "libvirtmod", "pyroute2", "psutil"}


def imported(importtime_stderr: str) -> set[str]:
    """Top-level modules in ``python -X importtime`` output."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"\|\s+([\w.]+)\s*$", importtime_stderr, re.M)}


def test_kvmworker_schema_writes_every_schema_without_importing_libvirt_pyroute2_or_psutil(tmp_path):
    done = subprocess.run(
        [sys.executable, "-X", "importtime", KVMWORKER, "schema", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = imported(done.stderr)
    assert "pydantic" in modules, "the probe must see the imports"
    assert modules & SYSTEM_LIBRARIES == set()
    written = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    assert written == {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.json")}


@pytest.mark.broker
def test_the_bridge_lists_every_command_in_its_openapi_without_importing_libvirt_pyroute2_or_psutil(tmp_path):
    broker = require_broker("amqp", AMQP_URL)
    argv = [sys.executable, "-X", "importtime", KVMWORKER, "bridge", "--broker", broker, "--port", "0"]
    argv += ["--token-file", str(tmp_path / "token")]
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=clean_env(), cwd=ROOT)
    try:
        url = next((m.group(1) for line in proc.stdout if (m := re.search(r"(http://\S+)", line))), None)
        assert url, f"the bridge exited ({proc.wait()}) without announcing its URL"
        schemas = httpx.get(url.rstrip("/") + "/openapi.json", timeout=10).json()["components"]["schemas"]
    finally:
        stop_process(proc, 20)
    listed = {name.removeprefix("Call.") for name in schemas if name.count(".") == 2 and name.startswith("Call.")}
    assert listed == {f"{d.handler}.{d.name}" for d in [*worker_commands(), *bridge_commands()]}
    modules = imported(Path(tmp_path / "stderr").read_text())
    assert "starlette" in modules, "the probe must see the imports"
    assert modules & SYSTEM_LIBRARIES == set()


def test_the_worker_runs_exactly_the_commands_the_api_declares(tmp_path):
    registry = build_registry(Settings(host="kvt-decl", state_dir=tmp_path, libvirt_uri="test:///default"))
    try:
        running = {(b.handler, b.name): b.spec for b in registry.commands()}
        assert running == {(d.handler, d.name): d.spec for d in worker_commands()}
        assert all(b.plan is not None for b in registry.commands() if b.spec.mutates)
    finally:
        for handler in registry.handlers:
            getattr(handler, "close", lambda: None)()


class Name(BaseModel):
    name: str


class Api:
    """Declarations on a plain class (not an ABC), so that a handler missing one can still be built."""

    name = "Kvt"

    @command(Name)
    @abstractmethod
    def make(self, data: Name, ctx) -> dict: ...

    @command(Name, mutates=False)
    @abstractmethod
    def show(self, data: Name, ctx) -> dict: ...


class Complete(Api):
    def make(self, data, ctx):
        return {"made": data.name}

    def plan_make(self, data, ctx):
        return Plan([f"make {data.name}"])

    def show(self, data, ctx):
        return {"name": data.name}


def test_a_handler_that_implements_its_api_is_registered_with_a_plan_for_its_mutating_command():
    registry = HandlerRegistry([Complete()])
    assert registry.catalogue() == {"Kvt": ["make", "show"]}
    assert registry.lookup("Kvt", "make").plan is not None and registry.lookup("Kvt", "show").plan is None


class Unimplemented(Api):
    def make(self, data, ctx):
        return {}

    def plan_make(self, data, ctx):
        return Plan([])


class WithoutPlan(Api):
    def make(self, data, ctx):
        return {}

    def show(self, data, ctx):
        return {}


class PlanOfAReadOnlyCommand(Complete):
    def plan_show(self, data, ctx):
        return Plan([])


class WrongArguments(Complete):
    def make(self, data):
        return {}


class Redeclared(Complete):
    @command(Name, mutates=False)
    def make(self, data, ctx):
        return {}


@pytest.mark.parametrize(
    ("handler", "refusal"),
    [
        (Unimplemented, "Kvt.show is declared but Unimplemented does not implement it"),
        (WithoutPlan, "Kvt.make changes the host but WithoutPlan has no plan_make"),
        (PlanOfAReadOnlyCommand, "Kvt.plan_show plans 'show', which is no mutating command of Kvt"),
        (WrongArguments, r"Kvt.make must take \(data, ctx\)"),
        (Redeclared, "Redeclared.make is declared in both Api and Redeclared"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_a_handler_whose_methods_and_declarations_disagree_is_refused(handler, refusal):
    with pytest.raises(DeclarationError, match=refusal):
        HandlerRegistry([handler()])
