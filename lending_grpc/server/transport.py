"""How the server meets the network: TLS / mTLS credentials, message and connection limits.

The values below are deliberate; docs/operations/postgresql.md ("Connection
management") explains each one. They bound what one connection can cost the server (message size,
metadata size, ping floods, idle and ageless connections) without getting in
the way of ordinary clients.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from lending_grpc.config import ConfigError, Settings

# Connection management (milliseconds).
KEEPALIVE_TIME_MS = 120_000  # the server pings an idle connection every 2 min to find dead peers
KEEPALIVE_TIMEOUT_MS = 20_000  # and closes it when the ping is not answered within 20 s
MIN_CLIENT_PING_INTERVAL_MS = 10_000  # clients may ping at most every 10 s ...
MAX_PING_STRIKES = 2  # ... a third too-early ping gets GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings")
MAX_CONNECTION_IDLE_MS = 300_000  # a connection with no call for 5 min is closed (GOAWAY; clients reconnect)
MAX_CONNECTION_AGE_MS = 1_800_000  # every connection is recycled after 30 min so load rebalances ...
MAX_CONNECTION_AGE_GRACE_MS = 30_000  # ... giving its in-flight calls 30 s to finish
MAX_METADATA_BYTES = 16 * 1024  # request headers (tokens, request ids) never need more


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """grpc.server options: message size limits and keepalive enforcement.

    ``reuse_port`` lets worker processes share the port; off otherwise, so a
    second server on our port fails instead of silently sharing it.
    """
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Clients that keep idle connections warm with pings (grpc-go PermitWithoutStream) are welcome,
        # within the minimum interval below.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]


def _read_pem(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting} {path} is not a PEM file")
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured (mTLS with a client CA), else None (plaintext)."""
    if not settings.tls_cert:
        return None
    chain = _read_pem(settings.tls_cert, "LENDING_TLS_CERT")
    key = _read_pem(settings.tls_key, "LENDING_TLS_KEY")
    client_ca = _read_pem(settings.tls_client_ca, "LENDING_TLS_CLIENT_CA") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
