"""The `lending-grpc serve` process: health, reflection, graceful shutdown, migrate."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from conftest import TEST_SECRET_KEY
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serverproc import ServerProcess


def _list_services(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return {service.name for response in responses for service in response.list_services_response.service}


@pytest.mark.slow
def test_serve_reports_serving_lists_services_and_drains_on_sigterm(tmp_path):
    server = ServerProcess(tmp_path / "p.db")
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lending.v1.BillingService", "lending.v1.AuthService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert _list_services(channel) == {
            "lending.v1.AuthService",
            "lending.v1.BillingService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
    assert server.terminate() == 0
    log = "".join(server.log)
    assert "received SIGTERM: draining" in log and "lending-grpc stopped" in log
    assert TEST_SECRET_KEY not in log


def test_health_turns_not_serving_when_draining(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        server.health.enter_graceful_shutdown()
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_access_log_has_one_line_per_rpc_without_secrets(api, caplog):
    from lending.v1 import auth_pb2

    caplog.set_level("INFO", logger="lending_grpc.access")
    api.auth.Register(
        auth_pb2.RegisterRequest(username="logme", password="s3cret-password", email="l@example.com")
    )
    tokens = api.auth.Login(auth_pb2.LoginRequest(username="logme", password="s3cret-password"))
    with pytest.raises(grpc.RpcError):
        api.auth.Login(auth_pb2.LoginRequest(username="logme", password="wrong-password"))
    lines = [r.getMessage() for r in caplog.records if r.name == "lending_grpc.access"]
    assert len(lines) == 3
    assert "method=/lending.v1.AuthService/Login code=UNAUTHENTICATED" in lines[2]
    assert "code=OK" in lines[0] and " ms=" in lines[0]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret-password" not in text and tokens.access_token not in text


def test_migrate_command_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    first = subprocess.run(
        [sys.executable, "-m", "lending_grpc", "migrate", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert first.returncode == 0 and "applied migrations: [1]" in first.stdout
    second = subprocess.run(
        [sys.executable, "-m", "lending_grpc", "migrate", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 0 and "schema is up to date" in second.stdout


def test_serve_refuses_a_short_secret_key(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lending_grpc",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            f"sqlite:///{tmp_path / 'k.db'}",
            "--secret-key",
            "too-short",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "at least 32 bytes" in result.stderr and "too-short" not in result.stderr
