"""The Kustomize overlays (deploy/kubernetes/overlays/dev and prod), rendered and checked offline.

`kubectl kustomize` renders each overlay as `kubectl apply -k` would; kubernetes-validate checks
the result against the Kubernetes 1.30 API schemas (as tests/test_deploy.py does for the base).
It cannot check custom resources (PrometheusRule, ServiceMonitor, SecretProviderClass), and only
warns about them, so the tests pin exactly which kinds went unchecked and assert what matters
about those by hand. No cluster is needed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from helpers import RULE_FILES, floor_case, require_tool, run_floor_cases

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = KUBERNETES / "overlays"
KUBECTL_HINT = "kubectl renders Kustomize (`kubectl kustomize`); GitHub's runners have it"
KUBERNETES_VERSION = "1.30.0"
CUSTOM_RESOURCES = {"PrometheusRule", "ServiceMonitor", "SecretProviderClass"}


def _render(directory: Path) -> str:
    result = subprocess.run(
        [require_tool("kubectl", KUBECTL_HINT), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _by_kind(text: str) -> dict[str, list[dict]]:
    objects: dict[str, list[dict]] = {}
    for doc in yaml.safe_load_all(text):
        objects.setdefault(doc["kind"], []).append(doc)
    return objects


@pytest.fixture(scope="module")
def prod() -> dict[str, list[dict]]:
    return _by_kind(_render(OVERLAYS / "prod"))


def _validate(text: str, tmp_path: Path) -> set[str]:
    """Validate rendered manifests; return the kinds kubernetes-validate had no schema for."""
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(text)
    validator = require_tool("kubernetes-validate", "`make setup` installs it")
    result = subprocess.run(
        [validator, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    unchecked = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    checked = [doc for doc in yaml.safe_load_all(text) if doc["kind"] not in unchecked]
    assert output.count("passed for resource") == len(checked), output
    return unchecked


def _pod(objects: dict[str, list[dict]]) -> dict:
    (deployment,) = objects["Deployment"]
    return deployment["spec"]["template"]


def _container(objects: dict[str, list[dict]]) -> dict:
    (container,) = _pod(objects)["spec"]["containers"]
    return container


def _selects(selector: dict, labels: dict) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_dev_overlay_renders_and_validates(tmp_path):
    text = _render(OVERLAYS / "dev")
    assert _validate(text, tmp_path) == set()
    objects = _by_kind(text)
    assert set(objects) == {"Deployment", "Service"}
    (deployment,) = objects["Deployment"]
    assert deployment["metadata"]["namespace"] == "lending-dev"
    assert deployment["spec"]["replicas"] == 1
    env = {item["name"]: item for item in _container(objects)["env"]}
    assert env["LENDING_LOG_LEVEL"]["value"] == "DEBUG"
    # Development keeps the base's Kubernetes Secrets, created out of band.
    assert next(v for v in _pod(objects)["spec"]["volumes"] if v["name"] == "keys")["secret"]
    assert "Secret" not in objects


def test_prod_overlay_renders_and_validates(tmp_path):
    text = _render(OVERLAYS / "prod")
    # Everything but the custom resources passes the API schemas; those are checked below.
    assert _validate(text, tmp_path) == CUSTOM_RESOURCES
    objects = _by_kind(text)
    assert {doc["metadata"]["namespace"] for docs in objects.values() for doc in docs} == {"lending"}


def test_prod_runs_replicated_with_a_disruption_budget_and_limits(prod):
    (deployment,) = prod["Deployment"]
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    pod_labels = _pod(prod)["metadata"]["labels"]
    (budget,) = prod["PodDisruptionBudget"]
    assert _selects(budget["spec"]["selector"], pod_labels)
    # The budget lets drains proceed one pod at a time, never all at once and never none.
    assert budget["spec"]["maxUnavailable"] == 1 < replicas
    resources = _container(prod)["resources"]
    assert set(resources["limits"]) == {"cpu", "memory"}
    assert set(resources["requests"]) == {"cpu", "memory"}
    spread = {c["topologyKey"]: c for c in _pod(prod)["spec"]["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert _selects(spread["kubernetes.io/hostname"]["labelSelector"], pod_labels)


def test_prod_network_policy_admits_only_grpc_and_the_metrics_scrape(prod):
    (policy,) = prod["NetworkPolicy"]
    spec = policy["spec"]
    assert _selects(spec["podSelector"], _pod(prod)["metadata"]["labels"])
    assert spec["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for p in _container(prod)["ports"]}
    rules = {rule["ports"][0]["port"]: rule for rule in spec["ingress"]}
    assert set(rules) == {ports["grpc"], ports["metrics"]}
    assert all(len(rule["ports"]) == 1 and rule["ports"][0]["protocol"] == "TCP" for rule in rules.values())
    # The metrics port only from Prometheus pods of the monitoring namespace, not from anywhere.
    (scraper,) = rules[ports["metrics"]]["from"]
    assert scraper["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert scraper["podSelector"]["matchLabels"]
    # gRPC from pods in the cluster; an empty `from` (anyone at all) is not allowed.
    assert rules[ports["grpc"]]["from"] == [{"namespaceSelector": {}}]


def test_prod_keys_and_database_url_come_from_vault_as_files(prod):
    assert "Secret" not in prod  # nothing to fill in by hand, nothing in the repository
    pod = _pod(prod)["spec"]
    container = _container(prod)
    env = {item["name"]: item for item in container["env"]}
    (provider_class,) = prod["SecretProviderClass"]
    assert provider_class["spec"]["provider"] == "vault"
    objects = {o["objectName"]: o for o in yaml.safe_load(provider_class["spec"]["parameters"]["objects"])}

    # The key files the *_FILE settings name are files of the Vault-backed CSI volume.
    keys = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert "secret" not in keys
    assert keys["csi"]["driver"] == "secrets-store.csi.k8s.io" and keys["csi"]["readOnly"] is True
    assert keys["csi"]["volumeAttributes"]["secretProviderClass"] == provider_class["metadata"]["name"]
    mount = PurePosixPath(next(m for m in container["volumeMounts"] if m["name"] == "keys")["mountPath"])
    for setting in ("LENDING_SECRET_KEY_FILE", "LENDING_DATA_KEY_FILE"):
        path = PurePosixPath(env[setting]["value"])
        assert path.parent == mount and path.name in objects, setting
    # Root-owned files (the driver ignores fsGroup) that uid 10001 can read and nobody can write.
    assert {o["filePermission"] for o in objects.values()} == {0o444}

    # The URL: a Vault object, synced by the driver into the Secret the base reads it from.
    reference = env["LENDING_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    synced = {
        (s["secretName"], item["key"]): item["objectName"]
        for s in provider_class["spec"]["secretObjects"]
        for item in s["data"]
    }
    assert synced[(reference["name"], reference["key"])] in objects

    # Vault's role is bound to a service account of its own; still no token in the pod.
    (account,) = prod["ServiceAccount"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False and pod["automountServiceAccountToken"] is False


def test_prod_scrapes_the_metrics_port_under_the_job_name_the_rules_use(prod):
    (service,) = prod["Service"]
    (monitor,) = prod["ServiceMonitor"]
    assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "lending-grpc"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["port"] == "metrics"
    names = {rule["metadata"]["name"] for rule in prod["PrometheusRule"]}
    assert names == {"lending-grpc", "lending-grpc-tkb90-floor"}


def test_an_overlay_patch_raises_the_tkb90_floor(tmp_path):
    """The documented patch (docs/operations/deployment.md) makes 93% page, end to end."""
    tree = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", tree)
    overlay = tree / "kubernetes" / "overlays" / "stricter-floor"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../prod"],
                "patches": [
                    {
                        "target": {"kind": "PrometheusRule", "name": "lending-grpc-tkb90-floor"},
                        "patch": "- op: replace\n  path: /spec/groups/0/rules/0/expr\n  value: vector(95)\n",
                    }
                ],
            }
        )
    )
    rules = {doc["metadata"]["name"]: doc for doc in _by_kind(_render(overlay))["PrometheusRule"]}
    promtool = require_tool("promtool", "Debian/Ubuntu package `prometheus`; .ci/run installs it")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for path, name in zip(RULE_FILES, ("lending-grpc", "lending-grpc-tkb90-floor"), strict=True):
        (rules_dir / path.name).write_text(yaml.safe_dump({"groups": rules[name]["spec"]["groups"]}))
    result = run_floor_cases(promtool, rules_dir, [floor_case(93, fires=True), floor_case(96, fires=False)])
    assert result.returncode == 0, result.stdout + result.stderr
