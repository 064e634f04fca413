"""Deployment files: the Dockerfile and the Kubernetes manifests, checked without a container engine.

No Docker daemon or cluster is needed: hadolint lints the Dockerfile,
kubernetes-validate checks the manifests against the Kubernetes API
schemas, and the tests below pin what the README promises about them. The
health command that the image uses as its HEALTHCHECK runs against a real
server.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import require_tool, run_cli, running_api

from lending_grpc.cli.main import build_parser
from lending_grpc.config import Settings, known_names

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes" / "base"
BIN = Path(sys.executable).parent
KNOWN_ENV = {Settings.env_name(field.name) for field in dataclasses.fields(Settings)}
# Every place the repository sets LENDING_* variables for a process it starts: the server refuses
# an unknown name (a typo must not start it on a generated key), so none may set one.
_SETS_VARIABLES = {
    "Dockerfile": r"\b(LENDING_[A-Z0-9_]+)=",
    "Makefile": r"\b(LENDING_[A-Z0-9_]+)=",
    ".ci/run": r"\b(LENDING_[A-Z0-9_]+)=",
    ".github/workflows/ci.yml": r"\b(LENDING_[A-Z0-9_]+)\s*[:=]",
    "deploy/**/*.yaml": r"name:\s*[\"']?(LENDING_[A-Z0-9_]+)",
    "examples/**/*.sh": r"\b(LENDING_[A-Z0-9_]+)=",
    "bench/*.py": r"\b(LENDING_[A-Z0-9_]+)=",
    "tests/*.py": r"\b(LENDING_[A-Z0-9_]+)=",
}


def _tool(name: str) -> str:
    return require_tool(name, "`make setup` installs it")


def _documents() -> dict[str, dict]:
    docs = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.stem)}"] = doc
    return docs


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_from_a_slim_base_with_the_health_service_as_healthcheck():
    instructions = _dockerfile_instructions()
    bases = [arg for op, arg in instructions if op == "FROM"]
    assert all(base.split()[0].startswith("python:3.12-slim") for base in bases)
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [arg for op, arg in final_stage if op == "USER"]
    assert users == ["10001:10001"]
    healthcheck = next(arg for op, arg in final_stage if op == "HEALTHCHECK")
    command = yaml.safe_load(healthcheck.split("CMD", 1)[1])  # the exec-form JSON array
    assert command[:2] == ["lending-grpc", "health"]
    assert build_parser().parse_args(command[1:]).server == "127.0.0.1:50051"
    entrypoint = yaml.safe_load(next(arg for op, arg in final_stage if op == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(arg for op, arg in final_stage if op == "CMD"))
    assert entrypoint + cmd == ["lending-grpc", "serve"]
    env = " ".join(arg for op, arg in final_stage if op == "ENV")
    for assignment in shlex.split(env):
        name = assignment.split("=", 1)[0]
        assert not name.startswith("LENDING_") or name in KNOWN_ENV, name
    # Copied sources exist: a renamed directory would break `docker build`.
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_manifests_validate_against_the_kubernetes_schemas():
    files = [str(path) for path in sorted(MANIFESTS.glob("*.yaml")) if path.name != "kustomization.yaml"]
    result = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.30.0", *files],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["deployment.yaml", "service.yaml"]  # never the example secrets


def test_deployment_probes_secrets_and_hardening():
    docs = _documents()
    pod = docs["Deployment/lending-grpc"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "lending.v1.BillingService"}
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": "liveness"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {item["name"]: item for item in container["env"]}
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
    assert env["LENDING_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "lending-database",
        "key": "url",
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "keys")["mountPath"]
    assert env["LENDING_SECRET_KEY_FILE"]["value"] == f"{mount}/jwt-key"
    assert env["LENDING_DATA_KEY_FILE"]["value"] == f"{mount}/data-key"
    keys = next(v for v in pod["volumes"] if v["name"] == "keys")["secret"]
    assert keys["secretName"] == "lending-keys" and {i["key"] for i in keys["items"]} == {
        "jwt-key",
        "data-key",
    }
    assert "LENDING_SECRET_KEY" not in env  # the key is never an inline variable
    # Plaintext only because the mesh terminates TLS, and said so in the manifest.
    assert env["LENDING_INSECURE"]["value"] == "true"
    assert "mesh" in (MANIFESTS / "deployment.yaml").read_text().split("apiVersion")[0]
    assert pod["enableServiceLinks"] is False
    service = docs["Service/lending-grpc"]["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == {"grpc": 50051, "metrics": 9090}
    assert docs["Secret/lending-keys"]["stringData"]["jwt-key"].startswith("REPLACE")


def test_no_set_up_in_the_repository_sets_an_unknown_setting():
    known = set(known_names())
    typos = {"LENDING_SECRETKEY", "LENDING_LISTN", "LENDING_PORT"}  # the tests' deliberate mistakes
    found: dict[str, set[str]] = {}
    for pattern, assignment in _SETS_VARIABLES.items():
        for path in ROOT.glob(pattern):
            for match in re.finditer(assignment, path.read_text(encoding="utf-8")):
                found.setdefault(match.group(1), set()).add(str(path.relative_to(ROOT)))
    assert "LENDING_LISTEN" in found and "LENDING_SERVER" in found  # the patterns do find assignments
    unknown = {name: sorted(paths) for name, paths in found.items() if name not in known | typos}
    assert not unknown, unknown


def test_health_command_reports_serving_then_failure(tmp_path):
    with running_api(tmp_path) as api:
        running = api.server
        address = f"127.0.0.1:{running.port}"
        ok = run_cli("health", "--server", address, cwd=tmp_path)
        assert (ok.returncode, ok.stdout, ok.stderr) == (0, "SERVING\n", "")
        by_env = run_cli("health", cwd=tmp_path, LENDING_SERVER=address)  # as the client commands
        assert (by_env.returncode, by_env.stdout) == (0, "SERVING\n")
        # The option's old name, for health checks written before --server (hidden from --help).
        old = run_cli("health", "--address", address, cwd=tmp_path)
        assert (old.returncode, old.stdout) == (0, "SERVING\n")
        assert "--address" not in run_cli("health", "--help", cwd=tmp_path).stdout
        billing = run_cli(
            "health", "--server", address, "--service", "lending.v1.BillingService", cwd=tmp_path
        )
        assert (billing.returncode, billing.stdout) == (0, "SERVING\n")
        running.health.enter_graceful_shutdown()
        draining = run_cli("health", "--server", address, cwd=tmp_path)
        assert (draining.returncode, draining.stdout) == (1, "NOT_SERVING\n")
    gone = run_cli("health", "--server", address, "--timeout", "2", cwd=tmp_path)
    assert (gone.returncode, gone.stdout, gone.stderr) == (
        1,
        "",
        f"lending-grpc: cannot reach {address} (connection refused)\n",
    )
    # A malformed address is a usage error (exit 2); Docker keeps exit 2 of a health check for itself,
    # but that is a broken HEALTHCHECK line, not an unhealthy server.
    malformed = run_cli("health", "--server", "nonsense", cwd=tmp_path)
    assert (malformed.returncode, malformed.stderr) == (
        2,
        "lending-grpc: --server 'nonsense': expected HOST:PORT, e.g. 127.0.0.1:50051\n",
    )
