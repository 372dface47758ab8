"""Paths and loaded files of the deployment artefacts (the Dockerfile, the Helm chart, its docs), and a venv
built from the wheel alone."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kvmworker"
TEMPLATES = CHART / "templates"
FLEET_VALUES = CHART / "ci" / "fleet-values.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's way of combining values: maps merge key by key, null deletes a key, anything else replaces."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@pytest.fixture(scope="session")
def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="session")
def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


@pytest.fixture(scope="session")
def fleet_values(values: dict[str, Any]) -> dict[str, Any]:
    return merged(values, yaml.safe_load(FLEET_VALUES.read_text()))


@pytest.fixture(scope="session")
def templates() -> dict[str, str]:
    """Template file name → text, NOTES.txt and the helpers included."""
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


@dataclass
class WheelVenv:
    """A venv holding the project's wheel and its locked dependencies only: what the image installs."""

    path: Path
    wheel: Path

    @property
    def kvmworker(self) -> Path:
        return self.path / "bin" / "kvmworker"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def _pip(*args: str, cwd: Path | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> WheelVenv:
    """Built as the Dockerfile builds the image, once per session: the locked dependencies as wheels
    (hashes checked), the project's wheel from exactly the files .dockerignore lets through, then a fresh
    venv that installs the project's wheel from that wheelhouse alone (no index, no test extras)."""
    from tests.deploy.dockerfile import DockerIgnore

    tmp = tmp_path_factory.mktemp("wheelvenv")
    context, wheels = tmp / "context", tmp / "wheels"
    for rel in DockerIgnore(DOCKERIGNORE.read_text()).context(ROOT):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    _pip("wheel", "-q", "--require-hashes", "--wheel-dir", str(wheels), "-r", str(context / "requirements.lock"))
    _pip("wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(context))
    (wheel,) = wheels.glob("kvmworker-*.whl")
    venv = tmp / "venv"
    # no pip of its own (ensurepip is the slowest step): the test venv's pip installs into it
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    _pip(
        "--python", str(venv / "bin" / "python"), "install", "-q", "--no-index", "--find-links", str(wheels), str(wheel)
    )
    return WheelVenv(venv, wheel)
