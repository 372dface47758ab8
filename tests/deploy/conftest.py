"""Paths and loaded files of the deployment artefacts: the Dockerfile, the Helm chart, its docs."""

from __future__ import annotations

import copy
import json
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
