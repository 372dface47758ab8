"""The worker loads the parts of pyroute2 and prometheus_client it uses, and their packages still work whole;
what only some commands need is loaded by the first of them, not at start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmworker.client import Client
from kvmworker.lazyimport import parts_only
from kvmworker.transport.connection import delete_host_queue
from tests.conftest import AMQP_URL, require_broker, unique
from tests.support.processes import stop_process

NOT_AT_START = {
    "pyroute2.iproute": "IPRoute: tuntap, routes, addresses and the network inventory open it when they run",
    "unittest": "pyroute2.iproute's mock engine brings it",
    "asyncio": "only the bridge awaits events (events/fanout.py) and IPRoute runs on it",
    "psutil": "the services section reads the process table with it",
    "pydantic_settings": "Settings reads its variables and config file itself (kvmworker.settings)",
    "importlib.metadata": "pydantic's and kombu's entry-point groups are read from entry_points.txt (lazyimport)",
    "email.message": "importlib.metadata brings it",
    "yaml": "kombu's YAML serializer imports PyYAML with the first YAML message",
    "tomllib": "only a worker given a TOML config file parses one",
    "xml.etree.ElementTree": "the VM, storage and inventory commands that read or write XML load it",
}
"""Modules a worker that has started, watched links, answered a ping and idled must not have loaded."""

PROBE = textwrap.dedent(
    """
    import json, sys
    import kvmworker.cli, kvmworker.runtime  # everything `kvmworker worker` imports before it consumes
    before = sorted(sys.modules)
    import pyroute2, prometheus_client
    from pyroute2 import IPRoute, NDB  # the package's own names: its __init__ runs now
    from prometheus_client import REGISTRY, generate_latest
    print(json.dumps({
        "before": before,
        "iproute": IPRoute.__module__,
        "ndb": NDB.__name__,
        "version": pyroute2.__version__,
        "metrics": generate_latest(REGISTRY).decode()[:2000],
    }))
    """
)


def test_the_worker_imports_no_pyroute2_ndb_nor_prometheus_exposition_and_both_packages_still_work_whole():
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    before = set(seen["before"])
    assert "pyroute2.netlink.rtnl.ifinfmsg" in before and "prometheus_client.metrics" in before, "the parts in use"
    unused = {"pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.conntrack", "prometheus_client.exposition", "wsgiref"}
    assert not unused & before, unused & before
    assert (seen["iproute"], seen["ndb"]) == ("pyroute2.iproute.linux", "NDB")
    assert seen["version"][0].isdigit()
    assert "process_cpu_seconds_total" in seen["metrics"], "the default registry got its collectors once loaded"


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``kvtlazy`` whose __init__ counts its runs (in ``kvtlazy_runs``) and has a submodule."""
    root = tmp_path / "kvtlazy"
    root.mkdir()
    (root / "__init__.py").write_text(
        "import builtins\nbuiltins.kvtlazy_runs = getattr(builtins, 'kvtlazy_runs', 0) + 1\n"
        "from kvtlazy.part import PART\nWHOLE = 'whole'\n"
    )
    (root / "part.py").write_text("PART = 'part'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "kvtlazy"
    for name in [m for m in sys.modules if m == "kvtlazy" or m.startswith("kvtlazy.")]:
        del sys.modules[name]
    import builtins

    if hasattr(builtins, "kvtlazy_runs"):
        del builtins.kvtlazy_runs


def runs() -> int:
    import builtins

    return getattr(builtins, "kvtlazy_runs", 0)


def test_a_submodule_imports_without_the_package_init_until_a_name_of_the_package_is_asked_for(package):
    parts_only(package)
    from kvtlazy import part  # a submodule: no reason to run __init__
    from kvtlazy.part import PART

    assert (part.PART, PART, runs()) == ("part", "part", 0)
    import kvtlazy

    assert kvtlazy.WHOLE == "whole" and runs() == 1
    assert kvtlazy.PART == "part" and runs() == 1, "__init__ runs once"
    with pytest.raises(AttributeError, match="no attribute 'MISSING'"):
        kvtlazy.MISSING  # noqa: B018


def test_a_package_already_imported_is_left_as_it_is(package):
    import kvtlazy

    parts_only(package)
    assert sys.modules[package] is kvtlazy and runs() == 1 and "__getattr__" not in vars(kvtlazy)


def test_a_package_that_is_not_installed_is_left_to_the_import_that_needs_it():
    parts_only("kvt_not_installed_anywhere")
    assert "kvt_not_installed_anywhere" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import kvt_not_installed_anywhere  # noqa: F401


def imported_by(importtime: str) -> set[str]:
    """The modules ``python -X importtime`` reported loading."""
    lines = (line.split("|", 2) for line in importtime.splitlines() if line.startswith("import time:"))
    return {parts[2].strip() for parts in lines if len(parts) == 3 and parts[2].strip() != "package"}


def test_a_worker_that_started_and_answered_a_ping_has_not_loaded_what_only_other_commands_need(tmp_path):
    url = require_broker("amqp", AMQP_URL)
    host = unique("kvt-lazy-")
    cmd = [sys.executable, "-X", "importtime", "-m", "kvmworker", "worker", "--host", host, "--broker", url]
    cmd += ["--state-dir", str(tmp_path / "state"), "--log-level", "WARNING"]
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=stderr)
    try:
        with Client(url) as client:
            reply = client.call(host, "SystemHandler", "ping", timeout=60)
        assert reply.code == 0, reply
    finally:
        stop_process(proc)
        delete_host_queue(url, host)
    loaded = imported_by((tmp_path / "stderr").read_text())
    assert "kvmworker.netplane.watch" in loaded and "pyroute2.netlink.rtnl.ifinfmsg" in loaded, "what it does use"
    early = {name: why for name, why in NOT_AT_START.items() if name in loaded}
    assert not early, early


def run_python(code: str, path: Path | None = None) -> dict:
    """``code`` in a fresh interpreter (``path`` first on its PYTHONPATH); what it printed, as JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path or ""), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_entry_points_of_a_group_nobody_declares_are_answered_without_importing_importlib_metadata():
    seen = run_python(
        """
        import json, sys
        import kvmworker.cli, kvmworker.runtime, importlib.metadata
        none = importlib.metadata.entry_points(group="kvt-nobody-declares-this")
        before = "email.message" in sys.modules
        version = importlib.metadata.version("kombu")  # any other use imports the module
        scripts = importlib.metadata.entry_points(group="console_scripts")
        print(json.dumps({"none": [len(none), sorted(none.names), len(none.select(name="x"))], "before": before,
                          "version": version, "ours": [e.value for e in scripts if e.name == "kvmworker"],
                          "after": "email.message" in sys.modules}))
        """
    )
    assert seen["none"] == [0, [], 0] and seen["before"] is False
    assert seen["version"][0].isdigit() and seen["after"] is True
    assert seen["ours"] == ["kvmworker.cli:main"], "a declared group is read by importlib.metadata itself"


def test_a_program_using_kvmworker_as_a_library_keeps_its_own_modules_no_stand_in_is_put_there():
    seen = run_python(
        """
        import json, sys
        import kvmworker.client, kvmworker.runtime  # an orchestrator's process: the client, even a worker in it
        from kvmworker.lazyimport import _OnDemand
        print(json.dumps({name: isinstance(sys.modules.get(name), _OnDemand)
                          for name in ("importlib.metadata", "yaml", "xml.etree.ElementTree")}))
        """
    )
    assert seen == {"importlib.metadata": False, "yaml": False, "xml.etree.ElementTree": False}


def test_a_pydantic_plugin_installed_as_a_distribution_still_sees_the_workers_models(tmp_path):
    info = tmp_path / "kvtplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvtplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pydantic]\nkvtplug = kvtplug:plugin\n")
    (tmp_path / "kvtplug.py").write_text(
        "class Plugin:\n"
        "    seen = []\n"
        "    def new_schema_validator(self, schema, schema_type, path, kind, config, settings):\n"
        "        self.seen.append(getattr(schema_type, '__name__', str(schema_type)))\n"
        "        return None, None, None\n"
        "plugin = Plugin()\n"
    )
    seen = run_python(
        """
        import json
        import kvmworker.cli, kvmworker.runtime  # the CLI's process, as `kvmworker worker` runs
        from kvmworker.protocol.envelope import Envelope
        import kvtplug
        print(json.dumps({"seen": kvtplug.plugin.seen}))
        """,
        tmp_path,
    )
    assert "Envelope" in seen["seen"], seen


def test_kombu_still_writes_and_reads_yaml_though_the_worker_did_not_import_pyyaml_at_start():
    seen = run_python(
        """
        import json, sys
        import kvmworker.cli, kvmworker.runtime  # the CLI's process, as `kvmworker worker` runs
        from kombu import serialization
        at_start = "yaml.loader" in sys.modules
        kind, encoding, body = serialization.dumps({"a": [1, 2]}, serializer="yaml")
        back = serialization.loads(body, kind, encoding, accept={kind})
        print(json.dumps({"at_start": at_start, "kind": kind, "body": body, "back": back}))
        """
    )
    assert seen["at_start"] is False
    assert (seen["kind"], seen["back"]) == ("application/x-yaml", {"a": [1, 2]})
    assert "a:" in seen["body"]


def test_our_domain_metadata_keeps_its_prefix_when_elementtree_loads_after_the_worker_started():
    seen = run_python(
        """
        import json, sys
        import kvmworker.cli, kvmworker.runtime  # the CLI's process, as `kvmworker worker` runs
        at_start = "xml.etree.ElementPath" in sys.modules
        from kvmworker.protocol import safe_xml
        ns = "https://kvmworker.invalid/xmlns/domain/1"
        text = safe_xml.serialize(safe_xml.parse(f'<domain><metadata><w:worker xmlns:w="{ns}"/></metadata></domain>'))
        try:
            safe_xml.parse('<!DOCTYPE d [<!ENTITY e "x">]><d>&e;</d>')
            refused = None
        except Exception as exc:
            refused = getattr(exc, "code", repr(exc))
        print(json.dumps({"at_start": at_start, "text": text, "refused": refused}))
        """
    )
    assert seen["at_start"] is False
    assert "<kvmworker:worker" in seen["text"], seen["text"]
    assert seen["refused"] == 30006, "a DOCTYPE is still refused"


def test_the_command_models_build_their_validators_with_their_first_use_not_at_start():
    seen = run_python(
        """
        import json
        import kvmworker.cli, kvmworker.runtime  # the CLI's process, as `kvmworker worker` runs
        from pydantic import BaseModel
        from kvmworker.api.catalogue import worker_commands  # every command, as the bridge and `schema` read them
        from kvmworker.api.vm import MigrateData

        def models(cls):
            for sub in cls.__subclasses__():
                yield sub
                yield from models(sub)

        assert worker_commands()
        built = sorted({m.__qualname__ for m in models(BaseModel) if m.__module__.startswith("kvmworker.api.")
                        and m.__pydantic_complete__})
        data = MigrateData.model_validate({"name": "kvt", "destination": "kvt-host"})
        try:
            MigrateData.model_validate({"name": "kvt"})  # no destination
            refused = None
        except Exception as exc:
            refused = type(exc).__name__
        print(json.dumps({"built": built, "name": data.name, "refused": refused}))
        """
    )
    assert seen["built"] == [], "no command's model is built before its first use"
    assert (seen["name"], seen["refused"]) == ("kvt", "ValidationError")


def test_a_worker_validates_a_commands_data_through_a_model_it_builds_on_that_first_command(tmp_path):
    url = require_broker("amqp", AMQP_URL)
    host = unique("kvt-lazy-")
    cmd = [sys.executable, "-m", "kvmworker", "worker", "--host", host, "--broker", url]
    cmd += ["--state-dir", str(tmp_path / "state"), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        with Client(url) as client:
            wrong = client.call(host, "SystemHandler", "result", {"msg_id": "not-a-uuid"}, timeout=60)
            never = client.call(host, "SystemHandler", "result", {"msg_id": str(uuid.uuid4())}, timeout=30)
    finally:
        stop_process(proc)
        delete_host_queue(url, host)
    assert wrong.code == 30006 and "msg_id" in json.dumps(wrong.data) + wrong.msg, wrong
    assert never.code == -1 and never.data["state"] == "never_seen", never
