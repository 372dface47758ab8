"""The chart's plain YAML passes yamllint; where a ``helm`` binary exists, helm lints and renders it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.conftest import CHART, FLEET_VALUES, TEMPLATES

# Templates are Go templates, not YAML until rendered: yamllint sees only the rest.
YAMLLINT = YamlLintConfig("{extends: default, rules: {line-length: {max: 120}}}")

HELM = shutil.which("helm")
needs_helm = pytest.mark.skipif(
    HELM is None,
    reason="no helm binary on PATH: Debian 12 packages none and PyPI's helm-package ships only macOS and Windows "
    "binaries; install helm 3 to run helm lint and helm template",
)


def plain_yaml_files() -> list[Path]:
    files = [p for p in CHART.rglob("*") if p.suffix in (".yaml", ".yml") and TEMPLATES not in p.parents]
    return sorted(files)


def test_the_chart_has_plain_yaml_to_lint():
    names = {p.relative_to(CHART).as_posix() for p in plain_yaml_files()}
    assert {"Chart.yaml", "values.yaml", "ci/fleet-values.yaml"} <= names


@pytest.mark.parametrize("path", plain_yaml_files(), ids=lambda p: p.relative_to(CHART).as_posix())
def test_yaml_that_is_not_a_template_passes_yamllint(path):
    problems = [f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in linter.run(path.read_text(), YAMLLINT)]
    assert problems == []


def test_yamllint_reports_a_real_problem_so_the_test_above_can_fail():
    problems = list(linter.run("---\nkey: value\nkey: again\n", YAMLLINT))
    assert [p.rule for p in problems] == ["key-duplicates"]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)


def render(*value_args: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → object, from ``helm template``."""
    done = helm("template", "kvm", str(CHART), "--namespace", "kvm", *value_args)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@needs_helm
def test_helm_lint_passes_strictly_with_the_example_fleet_values():
    done = helm("lint", "--strict", str(CHART), "--values", str(FLEET_VALUES))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_helm
def test_helm_refuses_to_render_without_a_broker():
    done = helm("template", "kvm", str(CHART))
    assert done.returncode != 0
    assert "secret.brokerUrl is required" in done.stderr


@needs_helm
def test_the_rendered_worker_gets_the_host_it_needs():
    objects = render("--values", str(FLEET_VALUES))
    spec = objects[("DaemonSet", "kvm-kvmworker-worker")]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert spec["hostNetwork"] is True
    assert spec["terminationGracePeriodSeconds"] > 60
    assert container["securityContext"]["privileged"] is True
    assert env["KVMWORKER_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["KVMWORKER_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": "kvm-kvmworker", "key": "broker-url"}
    assert env["KVMWORKER_PHYSICAL_INTERFACES"]["value"] == '["ens224","bond0"]'
    assert mounts["netns"]["mountPropagation"] == "Bidirectional"
    assert container["livenessProbe"]["httpGet"]["port"] == "health"


@needs_helm
def test_the_rendered_bridge_runs_as_non_root_behind_a_service():
    objects = render("--values", str(FLEET_VALUES))
    pod = objects[("Deployment", "kvm-kvmworker-bridge")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert ("Service", "kvm-kvmworker-bridge") in objects
    assert {k for k, _ in objects} >= {"Secret", "ServiceMonitor", "DaemonSet", "Deployment", "Service"}


@needs_helm
def test_an_existing_secret_replaces_the_charts_own():
    objects = render("--set", "secret.existingSecret=kvm-creds")
    assert "Secret" not in {kind for kind, _ in objects}
    worker = objects[("DaemonSet", "kvm-kvmworker-worker")]["spec"]["template"]["spec"]["containers"][0]
    broker = next(e for e in worker["env"] if e["name"] == "KVMWORKER_BROKER_URL")
    assert broker["valueFrom"]["secretKeyRef"]["name"] == "kvm-creds"
