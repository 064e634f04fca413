"""The `lending-grpc serve` process: health, reflection, graceful shutdown, migrate."""

from __future__ import annotations

import stat
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers import TEST_DATA_KEY, TEST_SECRET_KEY, ServerProcess, run_cli


def _list_services(channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return {service.name for response in responses for service in response.list_services_response.service}


@pytest.mark.slow
def test_serve_reports_serving_lists_services_and_drains_on_sigterm(tmp_path):
    server = ServerProcess(tmp_path / "p.db")
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lending.v1.BillingService", "lending.v1.AuthService", "lending.v1.AuditService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert _list_services(channel) == {
            "lending.v1.AuthService",
            "lending.v1.BillingService",
            "lending.v1.AuditService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
    assert server.terminate() == 0
    log = "".join(server.log)
    assert "received SIGTERM: draining" in log and "lending-grpc stopped" in log
    assert TEST_SECRET_KEY not in log and TEST_DATA_KEY not in log


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


def test_serve_refuses_a_short_secret_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'k.db'}"
    result = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        cwd=tmp_path,
        LENDING_SECRET_KEY="too-short",
    )
    assert result.returncode == 2
    assert "at least 32 bytes" in result.stderr and "too-short" not in result.stderr


def test_startup_problems_are_one_line_errors_not_tracebacks(tmp_path):
    def serve(*args):
        return run_cli("serve", *args, cwd=tmp_path)

    url = f"sqlite:///{tmp_path / 'a.db'}"
    bad_listen = serve("--listen", "nonsense", "--database-url", url)
    assert bad_listen.returncode == 1 and "cannot listen on nonsense" in bad_listen.stderr
    assert "Traceback" not in bad_listen.stderr
    (tmp_path / ".env").write_text("LENDING_LISTN=127.0.0.1:1\n")
    unknown = serve("--database-url", url)
    assert (
        unknown.returncode == 2
        and "unknown setting LENDING_LISTN (did you mean LENDING_LISTEN?)" in unknown.stderr
    )
    (tmp_path / ".env").unlink()
    unwritable = serve("--listen", "127.0.0.1:0", "--database-url", "sqlite:////proc/no/such/dir/x.db")
    assert unwritable.returncode == 1 and "cannot create the database file" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    (tmp_path / "junk.db").write_bytes(b"this is not a database file at all" * 100)
    junk = serve("--listen", "127.0.0.1:0", "--database-url", f"sqlite:///{tmp_path / 'junk.db'}")
    assert junk.returncode == 1 and "file is not a database" in junk.stderr
    assert "Traceback" not in junk.stderr


def test_database_is_private_to_its_owner(tmp_path):
    server = ServerProcess(tmp_path / "private" / "p.db")
    try:
        assert stat.S_IMODE((tmp_path / "private" / "p.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    finally:
        server.terminate()


@pytest.mark.slow
def test_health_says_not_serving_during_the_drain_delay(tmp_path):
    server = ServerProcess(tmp_path / "d.db", "--drain-delay-seconds", "3")
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        server.proc.terminate()
        deadline = time.monotonic() + 2
        status = None
        while time.monotonic() < deadline:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert server.proc.wait(20) == 0


@pytest.mark.slow
def test_a_second_signal_stops_at_once(tmp_path):
    server = ServerProcess(tmp_path / "s.db", "--drain-delay-seconds", "60", "--shutdown-grace-seconds", "60")
    server.proc.terminate()
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.terminate()
    assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert "again: stopping now" in "".join(server.log)
