"""The chart's plain YAML (everything but templates, which are Go templates until rendered) passes yamllint."""

from __future__ import annotations

from pathlib import Path

import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.conftest import CHART, TEMPLATES

YAMLLINT = YamlLintConfig("{extends: default, rules: {line-length: {max: 120}}}")


def plain_yaml_files() -> list[Path]:
    return sorted(p for p in CHART.rglob("*") if p.suffix in (".yaml", ".yml") and TEMPLATES not in p.parents)


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
