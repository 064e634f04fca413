"""Transport security against real servers: TLS, mTLS, and refusing plaintext off loopback."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from helpers import (
    ServerProcess,
    health_status,
    make_ca,
    make_client_cert,
    make_server_cert,
    make_settings,
    run_cli,
)

from lending_grpc.config import ConfigError, is_loopback, load_settings
from lending_grpc.server import create_server

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path | bytes]:
    """Our CA with a server and a client certificate, and a foreign CA with a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca("lending test CA"), make_ca("some other CA")
    files: dict[str, Path | bytes] = {"ca": ca.cert_pem, "other_ca": other_ca.cert_pem}
    files["ca_file"] = ca.write(directory, "ca")[0]
    files["server_cert"], files["server_key"] = make_server_cert(ca).write(directory, "server")
    files["client"] = make_client_cert(ca)
    files["foreign_client"] = make_client_cert(other_ca, "intruder")
    return files


def _fails_handshake(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        health_status(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def _tls_channel(port: int, root: bytes, client=None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(f"localhost:{port}", credentials)


def test_tls_serves_and_refuses_plaintext_and_untrusted_clients(tmp_path, pki):
    running = create_server(
        make_settings(tmp_path, tls_cert=str(pki["server_cert"]), tls_key=str(pki["server_key"]))
    )
    try:
        with _tls_channel(running.port, pki["ca"]) as channel:
            assert health_status(channel) == SERVING
        _fails_handshake(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        # A client that trusts another CA does not accept our server.
        _fails_handshake(_tls_channel(running.port, pki["other_ca"]))
    finally:
        running.stop(0)


def test_mtls_requires_a_client_certificate_from_our_ca(tmp_path, pki):
    running = create_server(
        make_settings(
            tmp_path,
            tls_cert=str(pki["server_cert"]),
            tls_key=str(pki["server_key"]),
            tls_client_ca=str(pki["ca_file"]),
        )
    )
    try:
        with _tls_channel(running.port, pki["ca"], pki["client"]) as channel:
            assert health_status(channel) == SERVING
        _fails_handshake(_tls_channel(running.port, pki["ca"]))  # no client certificate
        _fails_handshake(_tls_channel(running.port, pki["ca"], pki["foreign_client"]))  # another CA's
        _fails_handshake(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
    finally:
        running.stop(0)


def test_plaintext_is_refused_off_loopback_unless_insecure():
    def load(**env):
        return load_settings(environ={f"LENDING_{k.upper()}": v for k, v in env.items()}, dotenv=None)

    with pytest.raises(ConfigError, match="refusing plaintext on the non-loopback address 0.0.0.0:50051"):
        load(listen="0.0.0.0:50051")
    with pytest.raises(ConfigError, match=r"non-loopback address \[::\]:50051"):
        load(listen="[::]:50051")
    assert load(listen="0.0.0.0:50051", insecure="true").insecure
    assert load(listen="0.0.0.0:50051", tls_cert="/c.pem", tls_key="/k.pem").tls_cert == "/c.pem"
    for address in ("127.0.0.1:50051", "localhost:50051", "[::1]:50051", "127.0.0.2:1", "unix:/run/l.sock"):
        assert is_loopback(address) and load(listen=address)
    assert not is_loopback("10.0.0.5:50051") and not is_loopback("example.com:50051")
    with pytest.raises(ConfigError, match="LENDING_TLS_CERT and LENDING_TLS_KEY must be set together"):
        load(tls_cert="/c.pem")
    with pytest.raises(ConfigError, match="LENDING_TLS_CLIENT_CA .mTLS. needs LENDING_TLS_CERT"):
        load(tls_client_ca="/ca.pem")


def test_unreadable_or_non_pem_certificate_is_a_config_error(tmp_path, pki):
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="LENDING_TLS_CERT .*junk.pem is not a PEM file"):
        create_server(
            make_settings(tmp_path, tls_cert=str(tmp_path / "junk.pem"), tls_key=str(pki["server_key"]))
        )
    with pytest.raises(ConfigError, match="cannot read LENDING_TLS_KEY /no/such.key"):
        create_server(make_settings(tmp_path, tls_cert=str(pki["server_cert"]), tls_key="/no/such.key"))


@pytest.mark.slow
def test_cli_flags_serve_mtls_on_all_interfaces_and_insecure_needs_saying(tmp_path, pki):
    refused = run_cli("serve", "--listen", "0.0.0.0:0", cwd=tmp_path)
    assert refused.returncode == 2
    assert "refusing plaintext on the non-loopback address 0.0.0.0:0" in refused.stderr
    tls_args = ("--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"]))
    proc = ServerProcess(
        tmp_path / "a.db", "--listen", "0.0.0.0:0", *tls_args, "--tls-client-ca", str(pki["ca_file"])
    )
    try:
        assert any("(database sqlite, mTLS)" in line for line in proc.log)
        with _tls_channel(proc.port, pki["ca"], pki["client"]) as channel:
            assert health_status(channel) == SERVING
        _fails_handshake(_tls_channel(proc.port, pki["ca"]))
    finally:
        assert proc.terminate() == 0
    proc = ServerProcess(tmp_path / "b.db", "--listen", "0.0.0.0:0", "--insecure")
    try:
        assert any("(database sqlite, plaintext)" in line for line in proc.log)
        with grpc.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            assert health_status(channel) == SERVING
    finally:
        assert proc.terminate() == 0


def test_the_python_sdk_pays_over_mutual_tls(tmp_path, pki):
    """The SDK end to end over mTLS: register, log in, create and pay; without its certificate it fails."""
    from lending_grpc.client import LendingClient, TlsConfig
    from lending_grpc.client.exceptions import Unavailable

    running = create_server(
        make_settings(
            tmp_path,
            tls_cert=str(pki["server_cert"]),
            tls_key=str(pki["server_key"]),
            tls_client_ca=str(pki["ca_file"]),
        )
    )
    client_cert = pki["client"]
    target = f"localhost:{running.port}"
    try:
        mutual = TlsConfig(pki["ca"], certificate_chain=client_cert.cert_pem, private_key=client_cert.key_pem)
        with LendingClient(target, tls=mutual, timeout=10) as client:
            client.register("tls-ada", "correct horse battery", "ada@example.com")
            client.login("tls-ada", "correct horse battery")
            client.create_loan("L-TLS", Decimal("5000000"), start_date=dt.date(2026, 1, 5))
            payment = client.make_payment("L-TLS", Decimal("110000"))
            assert (payment.first_week, payment.outstanding_balance) == (1, Decimal("5390000.00"))
        with LendingClient(target, tls=TlsConfig(pki["ca"]), timeout=5) as anonymous:
            with pytest.raises(Unavailable):  # the handshake fails without a client certificate
                anonymous.login("tls-ada", "correct horse battery")
    finally:
        running.stop(0)
