"""The channel: plaintext or TLS, with a gRPC service-config retry policy.

Retries happen inside gRPC (the service config below), so every RPC gets the
same bounded exponential backoff without a retry loop in Python, and retry
throttling stops a fleet of clients from hammering a struggling server.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

USER_AGENT = "lending-grpc-python/0.1"
# gRPC waits up to 120 s between attempts to reconnect to a server that went away, failing
# every call at once meanwhile; 5 s lets clients (and event watchers) find a restarted server
# within seconds, for the price of one connection attempt per client every 5 s while it is down.
MAX_RECONNECT_BACKOFF_MS = 5000

_AUTH = "lending.v1.AuthService"
_BILLING = "lending.v1.BillingService"
_EVENTS = "lending.v1.EventService"


def service_config(max_attempts: int = 5) -> str:
    """The service config JSON: retry UNAVAILABLE and ABORTED with exponential backoff.

    Register is left out: when its reply is lost after the account was
    created, a retry would turn that success into ALREADY_EXISTS. Every other
    unary call is safe to repeat (reads, ListEvents among them; CreateLoan is
    idempotent on loan_id; MakePayment on the request_id the client always
    sends; ReversePayment returns an already reversed payment unchanged).
    WatchEvents is left out too: gRPC may replay a stream only until its
    first message arrives, and a watcher must resume after the last event it
    saw, not from the start, so `LendingClient.watch_events` reconnects itself.
    """
    if not 1 <= max_attempts <= 5:  # gRPC caps attempts at 5 anyway
        raise ValueError("max_attempts must be between 1 and 5")
    retried = {
        "name": [
            {"service": _BILLING},
            {"service": _AUTH, "method": "Login"},
            {"service": _AUTH, "method": "RefreshToken"},
            {"service": _EVENTS, "method": "ListEvents"},
        ],
        "waitForReady": False,
    }
    if max_attempts > 1:
        retried["retryPolicy"] = {
            "maxAttempts": max_attempts,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE", "ABORTED"],
        }
    not_retried = {
        "name": [{"service": _AUTH, "method": "Register"}, {"service": _EVENTS, "method": "WatchEvents"}]
    }
    config = {
        "methodConfig": [retried, not_retried],
        # Stop retrying when more than half of recent calls failed (10 tokens, +0.1 per success).
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    }
    return json.dumps(config)


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """TLS settings: the CA that signs the server's certificate (None: the system's roots),
    and optionally a client certificate chain and key for mutual TLS (PEM bytes)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate needs its private key, and the key its certificate")

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> TlsConfig:
        """Read PEM files; a missing file raises OSError naming it."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return cls(read(ca_file), read(cert_file), read(key_file))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def open_channel(
    target: str,
    tls: TlsConfig | None = None,
    *,
    max_attempts: int = 5,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``target`` (host:port), TLS when ``tls`` is given, with the retry policy."""
    channel_options = [
        ("grpc.service_config", service_config(max_attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.primary_user_agent", USER_AGENT),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        *options,
    ]
    if tls is None:
        return grpc.insecure_channel(target, options=channel_options)
    return grpc.secure_channel(target, tls.credentials(), options=channel_options)
