"""The chart's values: the schema accepts the shipped values and refuses the mistakes it exists to catch."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

import kvmworker
from tests.deploy.conftest import CHART, merged


def errors(schema: dict[str, Any], values: dict[str, Any]) -> list[jsonschema.ValidationError]:
    return list(jsonschema.Draft7Validator(schema).iter_errors(values))


def test_the_schema_is_itself_a_valid_draft_7_schema(schema):
    jsonschema.Draft7Validator.check_schema(schema)


def test_values_yaml_validates_against_values_schema_json(schema, values):
    assert errors(schema, values) == []


def test_the_example_fleet_values_validate_against_the_schema(schema, fleet_values):
    assert errors(schema, fleet_values) == []


REFUSED = {
    "a grace period no longer than a VM shutdown": (
        {"worker": {"terminationGracePeriodSeconds": 60}},
        ["worker", "terminationGracePeriodSeconds"],
    ),
    "a bridge port a non-root process cannot bind": ({"bridge": {"port": 80}}, ["bridge", "port"]),
    "a bridge running as root": ({"bridge": {"runAsUser": 0}}, ["bridge", "runAsUser"]),
    "a memory:// broker, which no two pods share": ({"secret": {"brokerUrl": "memory://"}}, ["secret", "brokerUrl"]),
    "signing without the trusted public keys": (
        {"signing": {"enabled": True}, "secret": {"orchestratorKeys": "{}"}},
        ["secret", "trustedKeys"],
    ),
    "signing without the orchestrator's keys for the bridge": (
        {"signing": {"enabled": True}, "secret": {"trustedKeys": "{}"}},
        ["secret", "orchestratorKeys"],
    ),
    "an allowed host that is no host name": (
        {"bridge": {"allowedHosts": ["kvm01; rm"]}},
        ["bridge", "allowedHosts", 0],
    ),
    "bridge logins without users": ({"bridge": {"auth": {"enabled": True}}}, ["secret", "bridgeUsers"]),
    "a worker on every node (the label deleted)": (
        {"worker": {"nodeSelector": {"kvmworker/hypervisor": None}}},
        ["worker", "nodeSelector"],
    ),
    "a misspelt key": ({"worker": {"healthport": 9000}}, ["worker"]),
    "an interface name longer than IFNAMSIZ": (
        {"worker": {"physicalInterfaces": ["a-very-long-ifname"]}},
        ["worker", "physicalInterfaces", 0],
    ),
    "a relative state directory": ({"worker": {"stateDir": "var/lib/kvmworker"}}, ["worker", "stateDir"]),
}


@pytest.mark.parametrize("override, path", REFUSED.values(), ids=REFUSED.keys())
def test_the_schema_refuses(schema, values, override, path):
    found = errors(schema, merged(values, override))
    assert [list(e.absolute_path) for e in found] == [path], [e.message for e in found]


def test_a_secret_managed_elsewhere_needs_no_keys_or_users_in_values(schema, values):
    override = {
        "secret": {"existingSecret": "kvm-creds"},
        "signing": {"enabled": True},
        "bridge": {"auth": {"enabled": True}},
    }
    assert errors(schema, merged(values, override)) == []


def test_bridge_users_are_not_required_when_the_bridge_is_disabled(schema, values):
    override = {"bridge": {"enabled": False, "auth": {"enabled": True}}}
    assert errors(schema, merged(values, override)) == []


def test_the_charts_app_version_is_the_packages_version_so_the_default_image_tag_matches():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == kvmworker.__version__


def test_without_the_bridge_signing_needs_only_the_public_keys(schema, values):
    override = {"signing": {"enabled": True}, "secret": {"trustedKeys": "{}"}, "bridge": {"enabled": False}}
    assert errors(schema, merged(values, override)) == []
