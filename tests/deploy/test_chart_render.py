"""The chart rendered by Helm itself, and what it renders checked against Kubernetes' own schemas.

Two ways to run Helm, each used where it is present: the ``helm`` binary (Debian 12 packages none;
PyPI's helm-package holds only macOS and Windows builds), and Helm's Go SDK as a library (PyPI
``helm-python-sdk``, in the test extras). Rendering needs no cluster; ``kubernetes-validate`` holds
the API schemas of each Kubernetes release.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, FLEET_VALUES

RELEASE, NAMESPACE = "kvm", "kvm"
BROKER = {"secret": {"brokerUrl": "amqp://kvmworker:pw@rabbitmq.messaging.svc:5672/kvmworker"}}
USERS = "ops:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g\n"
OLDEST_KUBERNETES = "1.25.0"  # the chart's kubeVersion floor
AUTH = {"auth": {"enabled": True}}


class Refused(Exception):
    """Helm would not render these values (schema, or a ``required`` in a template)."""


class HelmBinary:
    def __init__(self, tmp: Path):
        self._tmp = tmp

    def render(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        done = self._run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", self._file(values))
        if done.returncode != 0:
            raise Refused(done.stderr)
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    def notes(self, values: dict[str, Any]) -> str:
        done = self._run(
            "template", RELEASE, str(CHART), "--values", self._file(values), "--show-only", "templates/NOTES.txt"
        )
        return done.stdout if done.returncode == 0 else done.stderr

    def lint(self, values: dict[str, Any]) -> list[str]:
        done = self._run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", self._file(values))
        return [] if done.returncode == 0 else [done.stdout + done.stderr]

    def _file(self, values: dict[str, Any]) -> str:
        path = self._tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        return str(path)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["helm", *args], capture_output=True, text=True, timeout=120)


class HelmSdk:
    def __init__(self, helm: Any):
        self._helm = helm

    def rendered(self, values: dict[str, Any]) -> dict[str, str]:
        with self._helm.Chart.load(str(CHART)) as chart:
            try:
                return chart.render(values, name=RELEASE, namespace=NAMESPACE)
            except self._helm.HelmError as exc:
                raise Refused(str(exc)) from exc

    def render(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        texts = [text for path, text in self.rendered(values).items() if path.endswith(".yaml")]
        return [doc for text in texts for doc in yaml.safe_load_all(text) if doc]

    def notes(self, values: dict[str, Any]) -> str:
        return self.rendered(values)["kvmworker/templates/NOTES.txt"]

    def lint(self, values: dict[str, Any]) -> list[str]:
        report = self._helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        return [*report["errors"], *(m["error"] for m in report["messages"] if m["severity"] >= 2)]


@pytest.fixture(params=["helm binary", "helm Go SDK"])
def helm(request, tmp_path):
    if request.param == "helm binary":
        if shutil.which("helm") is None:
            pytest.skip("no helm binary on PATH: Debian 12 packages none; PyPI's helm-package is macOS/Windows only")
        return HelmBinary(tmp_path)
    sdk = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[test]')")
    return HelmSdk(sdk)


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def worker_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs)[("DaemonSet", "kvm-kvmworker-worker")]["spec"]["template"]


def bridge_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs)[("Deployment", "kvm-kvmworker-bridge")]["spec"]["template"]


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def fleet() -> dict[str, Any]:
    return yaml.safe_load(FLEET_VALUES.read_text())


VALUE_SETS = {
    "defaults with a broker": BROKER,
    "the example fleet": fleet(),
    "a secret managed elsewhere, signing, logins, two bridges": {
        "secret": {"existingSecret": "kvm-creds"},
        "signing": {"enabled": True},
        "bridge": {"replicas": 2, "auth": {"enabled": True}, "allowedHosts": ["kvm01", "kvm02"]},
    },
    "signing with no bridge in the cluster": {
        **BROKER,
        "secret": {**BROKER["secret"], "trustedKeys": '{"orchestrator": {}}'},
        "signing": {"enabled": True},
        "bridge": {"enabled": False},
    },
    "no bridge, no host inventory, a fixed health address": {
        **BROKER,
        "bridge": {"enabled": False},
        "worker": {"hostInventory": False, "hostPID": False, "healthBind": "10.0.0.5"},
    },
}


def test_helm_lint_passes_strictly_with_the_example_fleet_values(helm):
    assert helm.lint(fleet()) == []


def test_helm_refuses_to_render_without_a_broker(helm):
    with pytest.raises(Refused, match=r"secret\.brokerUrl is required"):
        helm.render({})


def test_helm_applies_the_values_schema_before_rendering(helm):
    with pytest.raises(Refused, match="terminationGracePeriodSeconds"):
        helm.render({**BROKER, "worker": {"terminationGracePeriodSeconds": 30}})


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_object_is_valid_kubernetes_from_the_oldest_supported_release_to_the_latest(helm, values):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    docs = helm.render(values)
    builtin = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]  # a CRD: no schema shipped
    assert builtin
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        for doc in builtin:
            kubernetes_validate.validate(doc, version, strict=True)


def test_the_rendered_worker_gets_from_its_host_what_it_needs(helm):
    pod = worker_pod(helm.render(fleet()))
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    env, mounts = env_of(pod), {m["name"]: m for m in container["volumeMounts"]}
    assert (spec["hostNetwork"], spec["dnsPolicy"], spec["hostPID"]) == (True, "ClusterFirstWithHostNet", True)
    assert spec["nodeSelector"] == {"kvmworker/hypervisor": "true"}
    assert spec["terminationGracePeriodSeconds"] > 60
    assert container["securityContext"]["privileged"] is True
    assert {"NET_ADMIN", "SYS_ADMIN"} <= set(container["securityContext"]["capabilities"]["add"])
    assert env["KVMWORKER_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["KVMWORKER_HEALTH_BIND"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["KVMWORKER_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": "kvm-kvmworker", "key": "broker-url"}
    assert env["KVMWORKER_PHYSICAL_INTERFACES"]["value"] == '["ens224","bond0"]'
    assert mounts["netns"] == {"name": "netns", "mountPath": "/run/netns", "mountPropagation": "Bidirectional"}
    assert mounts["libvirt-run"]["mountPath"] == "/run/libvirt"
    probes = [container[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert probes == [{"path": "/healthz", "port": "health"}, {"path": "/healthz", "port": "health"},
                      {"path": "/readyz", "port": "health"}]  # fmt: skip
    assert container["ports"] == [{"name": "health", "containerPort": 9465, "protocol": "TCP"}]


def test_the_workers_state_and_storage_directories_are_the_hosts_own(helm):
    values = {**BROKER, "worker": {"storageDirs": ["/var/lib/libvirt/images", "/srv/vm-disks"]}}
    pod = worker_pod(helm.render(values))
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    mounted = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert host_paths["state"] == "/var/lib/kvmworker" and mounted["state"] == "/var/lib/kvmworker"
    assert [(host_paths[f"storage-{i}"], mounted[f"storage-{i}"]) for i in range(2)] == [
        ("/var/lib/libvirt/images", "/var/lib/libvirt/images"),
        ("/srv/vm-disks", "/srv/vm-disks"),
    ]
    assert env_of(pod)["KVMWORKER_STORAGE_DIRS"]["value"] == '["/var/lib/libvirt/images","/srv/vm-disks"]'
    assert "KVMWORKER_PHYSICAL_INTERFACES" not in env_of(pod)


def test_the_rendered_bridge_runs_as_non_root_behind_a_service(helm):
    docs = helm.render(fleet())
    pod, objects = bridge_pod(docs), by_kind(docs)
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert env_of(pod)["KVMWORKER_USERS_FILE"]["value"] == "/etc/kvmworker/secret/bridge-users"
    service = objects[("Service", "kvm-kvmworker-bridge")]["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    assert service["selector"].items() <= pod["metadata"]["labels"].items()


def test_logins_on_two_bridges_keep_each_caller_on_the_bridge_that_issued_its_token(helm):
    values = {**BROKER, "secret": {**BROKER["secret"], "bridgeUsers": USERS}}
    one = by_kind(helm.render({**values, "bridge": {"replicas": 1, "auth": {"enabled": True}}}))
    two = by_kind(helm.render({**values, "bridge": {"replicas": 2, "auth": {"enabled": True}}}))
    assert "sessionAffinity" not in one[("Service", "kvm-kvmworker-bridge")]["spec"]
    assert two[("Service", "kvm-kvmworker-bridge")]["spec"]["sessionAffinity"] == "ClientIP"


def test_an_existing_secret_replaces_the_charts_own(helm):
    values = {"secret": {"existingSecret": "kvm-creds"}, "signing": {"enabled": True}, "bridge": AUTH}
    docs = helm.render(values)
    assert "Secret" not in {d["kind"] for d in docs}
    for pod in (worker_pod(docs), bridge_pod(docs)):
        secret_volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "secret")
        assert env_of(pod)["KVMWORKER_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "kvm-creds"
        assert secret_volume["secret"]["secretName"] == "kvm-creds"
        assert env_of(pod)["KVMWORKER_TRUSTED_KEYS_FILE"]["value"] == "/etc/kvmworker/secret/trusted-keys.json"


def test_without_signing_or_logins_no_secret_file_is_mounted(helm):
    docs = helm.render(BROKER)
    for pod in (worker_pod(docs), bridge_pod(docs)):
        assert "secret" not in {v["name"] for v in pod["spec"]["volumes"]}
        assert {"KVMWORKER_KEYS_FILE", "KVMWORKER_TRUSTED_KEYS_FILE"}.isdisjoint(env_of(pod))
        assert "initContainers" not in pod["spec"]


def test_changing_the_charts_secret_rolls_the_pods(helm):
    before = worker_pod(helm.render(BROKER))["metadata"]["annotations"]["checksum/secret"]
    other = {"secret": {"brokerUrl": "amqp://kvmworker:new@rabbitmq.messaging.svc:5672/kvmworker"}}
    after = worker_pod(helm.render(other))["metadata"]["annotations"]["checksum/secret"]
    assert before != after


def test_the_service_monitors_select_the_services_that_carry_the_metrics(helm):
    objects = by_kind(helm.render(fleet()))
    for component, port in (("worker", "health"), ("bridge", "http")):
        monitor = objects[("ServiceMonitor", f"kvm-kvmworker-{component}")]["spec"]
        service = objects[("Service", f"kvm-kvmworker-{component}")]
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["endpoints"][0]["port"] == port in {p["name"] for p in service["spec"]["ports"]}


def test_the_notes_tell_how_to_label_a_node_and_warn_about_an_open_bridge(helm):
    notes = helm.notes(BROKER)
    assert "kubectl label node NODE kvmworker/hypervisor=true" in notes
    assert "WARNING: bridge.auth.enabled is false" in notes


def test_the_example_key_files_load_with_the_programs_own_readers_where_each_role_reads_them(helm, tmp_path):
    from kvmworker.bridge.users import parse as parse_users
    from kvmworker.trust.keys import load_private_keys, load_trusted_keys
    from kvmworker.trust.signing import load_worker_trust

    docs = helm.render(fleet())
    secret = by_kind(docs)[("Secret", "kvm-kvmworker")]["stringData"]
    for pod in (worker_pod(docs), bridge_pod(docs)):
        trusted = PurePosixPath(env_of(pod)["KVMWORKER_TRUSTED_KEYS_FILE"]["value"])
        volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "secret")
        mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "secret")
        assert trusted.parent == PurePosixPath(mount["mountPath"])
        assert {"key": "trusted-keys", "path": trusted.name} in volume["secret"]["items"]
    local = tmp_path / "trusted-keys.json"  # the name's suffix decides how the key file is parsed
    local.write_text(secret["trusted-keys"])
    orchestrator = load_worker_trust(local).orchestrator  # what a worker needs: at least one orchestrator key
    private = tmp_path / "orchestrator-keys.json"
    private.write_text(secret["orchestrator-keys"])
    private.chmod(0o600)
    keys = load_private_keys(private)
    assert {k: v.public_bytes_raw() for k, v in orchestrator.items()} == {
        k: v.public_key().public_bytes_raw() for k, v in keys.keys.items()
    }, "the example's trusted orchestrator keys are not the public halves of its orchestrator keys"
    assert set(load_trusted_keys(local).hosts) == {"kvm01"}
    assert list(parse_users(secret["bridge-users"])) == ["ops"]


def test_no_worker_pod_is_given_a_key_that_can_sign_commands(helm):
    pod = worker_pod(helm.render(fleet()))
    items = next(v for v in pod["spec"]["volumes"] if v["name"] == "secret")["secret"]["items"]
    assert [i["key"] for i in items] == ["trusted-keys"]
    assert "KVMWORKER_KEYS_FILE" not in env_of(pod)  # its reply key is its own, made in its state directory


def test_the_bridge_reads_the_orchestrators_keys_from_a_0600_copy_the_init_container_makes(helm):
    pod = bridge_pod(helm.render(fleet()))
    [init] = pod["spec"]["initContainers"]
    source, target = init["command"][-2:]
    assert init["command"][:3] == ["install", "-m", "0600"]
    assert env_of(pod)["KVMWORKER_KEYS_FILE"]["value"] == target
    init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    main_mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert PurePosixPath(source).parent == PurePosixPath(init_mounts["secret"])
    assert PurePosixPath(target).parent == PurePosixPath(init_mounts["private-keys"])
    assert main_mounts["private-keys"] == init_mounts["private-keys"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "private-keys")
    assert volume["emptyDir"]["medium"] == "Memory"
    secret_items = next(v for v in pod["spec"]["volumes"] if v["name"] == "secret")["secret"]["items"]
    assert {"key": "orchestrator-keys", "path": PurePosixPath(source).name} in secret_items


@pytest.mark.parametrize(
    "values",
    [
        {**BROKER, "secret": {**BROKER["secret"], "trustedKeys": "{}", "orchestratorKeys": "{}"}},
        {"secret": {"existingSecret": "kvm-creds"}},
    ],
    ids=["the charts secret", "an existing secret"],
)
def test_helm_refuses_to_render_signing_with_a_bridge_that_has_no_logins(helm, values):
    """A bridge without auth would sign any command anyone in the cluster sends it: a signing oracle."""
    with pytest.raises(Refused, match=r"signing\.enabled needs bridge\.auth\.enabled"):
        helm.render({**values, "signing": {"enabled": True}})
    with pytest.raises(Refused, match=r"signing\.enabled needs bridge\.auth\.enabled"):
        helm.render({**values, "signing": {"enabled": True}, "bridge": {"auth": {"enabled": False}}})


def test_the_bridges_allowed_hosts_are_a_chart_value(helm):
    pod = bridge_pod(helm.render(fleet()))
    assert json.loads(env_of(pod)["KVMWORKER_ALLOWED_HOSTS"]["value"]) == ["kvm01", "kvm02"]
    assert "KVMWORKER_ALLOWED_HOSTS" not in env_of(bridge_pod(helm.render(BROKER)))


def test_the_notes_tell_how_to_enrol_each_workers_reply_key_when_signing(helm):
    assert "kvmworker keys public" in helm.notes(fleet())
    assert "kvmworker keys public" not in helm.notes(BROKER)
