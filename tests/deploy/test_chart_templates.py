"""The chart's templates, read as text (no cluster, no helm binary needed): what they reference exists,
what values.yaml offers is used, the environment they set is what the program reads."""

from __future__ import annotations

import re
from typing import Any

from kvmworker.options import OLD_NAMES
from kvmworker.settings import ENV_PREFIX, Settings
from tests.deploy.conftest import DOCKERFILE

VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
ALIAS = re.compile(r"\{\{-?\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*:=\s*\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
ENV_NAME = re.compile(r"name:\s*(" + ENV_PREFIX + r"[A-Z0-9_]+)")
COMMENT = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.S)
OPENER = re.compile(r"\{\{-?\s*(if|with|range|define|block)\b")
END = re.compile(r"\{\{-?\s*end\b")


def value_paths(text: str) -> set[tuple[str, ...]]:
    """Every values path a template reads, through ``.Values.a.b`` and ``$x := .Values.a`` then ``$x.b``.

    An alias's own definition is not a read of the whole subtree; only what is read through it counts.
    """
    paths = {tuple(m.group(1)[1:].split(".")) for m in VALUES_REF.finditer(ALIAS.sub("", text))}
    for alias in ALIAS.finditer(text):
        base = tuple(alias.group(2)[1:].split("."))
        uses = re.finditer(r"\$" + alias.group(1) + r"((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text)
        paths |= {base + tuple(u.group(1)[1:].split(".")) for u in uses}
    return paths


def has_path(values: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return False
        values = values[key]
    return True


def leaf_paths(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of the values a user sets; an empty map or a list counts as one value."""
    out: list[tuple[str, ...]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += leaf_paths(value, (*prefix, key))
        else:
            out.append((*prefix, key))
    return out


def all_value_paths(templates: dict[str, str]) -> set[tuple[str, ...]]:
    return set().union(*(value_paths(text) for text in templates.values()))


def test_every_values_reference_in_the_templates_exists_in_values_yaml(templates, values):
    missing = sorted(".".join(p) for p in all_value_paths(templates) if not has_path(values, p))
    assert missing == []


def test_every_value_in_values_yaml_is_read_by_some_template(templates, values):
    used = all_value_paths(templates)
    unused = [".".join(leaf) for leaf in leaf_paths(values) if not any(leaf[: len(u)] == u for u in used)]
    assert unused == []


def test_the_reference_scan_sees_aliases_so_the_two_checks_above_can_fail(templates):
    paths = value_paths(templates["worker-daemonset.yaml"])
    assert ("worker", "terminationGracePeriodSeconds") in paths
    assert ("worker", "updateStrategy", "maxUnavailable") in paths


def test_every_kvmworker_variable_the_chart_and_the_image_set_is_a_setting_the_program_reads(templates):
    names = {m.group(1) for text in templates.values() for m in ENV_NAME.finditer(text)}
    names |= set(re.findall(r"\b(" + ENV_PREFIX + r"[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    fields = {name.removeprefix(ENV_PREFIX).lower() for name in names}
    # each name by its current spelling or an older one the program still reads (kvmworker.options.OLD_NAMES)
    current = {OLD_NAMES.get(name, name) for name in fields}
    expected = {"host", "broker", "state_dir", "health_port", "health_bind", "keys_file", "trusted_keys_file"}
    assert expected | {"users", "allowed_hosts"} <= current
    assert sorted(current - set(Settings.model_fields)) == []


def test_every_template_block_is_closed(templates):
    for name, text in templates.items():
        text = COMMENT.sub("", text)
        assert len(OPENER.findall(text)) == len(END.findall(text)), name


WORKER_MUST = {
    "the host's network": "hostNetwork: true",
    "cluster DNS from the host network": "dnsPolicy: ClusterFirstWithHostNet",
    "its host name from the node": "fieldPath: spec.nodeName",
    "namespaces visible on the host": "mountPropagation: Bidirectional",
    "which Kubernetes allows only privileged": "privileged: true",
    "netlink": '"NET_ADMIN"',
    "setns and mounts": '"SYS_ADMIN"',
    "liveness": "path: /healthz",
    "readiness": "path: /readyz",
    "a grace period from values": "terminationGracePeriodSeconds: {{ $w.terminationGracePeriodSeconds }}",
    "a state directory on the host": "path: {{ $w.stateDir }}",
    "libvirt's socket directory": "mountPath: /run/libvirt",
}
BRIDGE_MUST = {
    "non-root": "runAsNonRoot: true",
    "no capabilities": 'drop: ["ALL"]',
    "no escalation": "allowPrivilegeEscalation: false",
    "read-only root": "readOnlyRootFilesystem: true",
}


def test_the_worker_daemonset_has_what_the_worker_needs_from_its_host(templates):
    text = templates["worker-daemonset.yaml"]
    assert [why for why, line in WORKER_MUST.items() if line not in text] == []


def test_the_bridge_deployment_runs_unprivileged(templates):
    text = templates["bridge-deployment.yaml"]
    assert [why for why, line in BRIDGE_MUST.items() if line not in text] == []
