"""Helpers for the security tests: servers with custom settings, error details, direct database reads."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
from conftest import Api, make_settings
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from lending.v1 import audit_pb2_grpc, auth_pb2, auth_pb2_grpc, billing_pb2_grpc

from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.clock import Clock
from lending_grpc.core.storage.models import AuditEvent
from lending_grpc.core.views import Actor
from lending_grpc.server import create_server

PASSWORD = "correct horse battery"
CLI_ACTOR = Actor(name="cli:test", rpc="lending-grpc users grant")  # as the operator command records


@contextlib.contextmanager
def running_api(tmp_path: Path, database_url: str, **overrides) -> Iterator[Api]:
    """A real server with ``overrides`` on the test's database, and stubs for it (``api.audit`` too)."""
    server = create_server(make_settings(tmp_path, database_url=database_url, **overrides))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        api = Api(
            channel,
            auth_pb2_grpc.AuthServiceStub(channel),
            billing_pb2_grpc.BillingServiceStub(channel),
            server,
        )
        api.audit = audit_pb2_grpc.AuditServiceStub(channel)
        yield api
    finally:
        channel.close()
        server.stop(0)


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def register(api: Api, username: str, password: str = PASSWORD, email: str | None = None):
    return api.auth.Register(
        auth_pb2.RegisterRequest(
            username=username, password=password, email=email or f"{username}@example.com"
        )
    )


def login(api: Api, username: str, password: str = PASSWORD):
    return api.auth.Login(auth_pb2.LoginRequest(username=username, password=password))


def grant_operator(api: Api, username: str) -> None:
    """What `lending-grpc users grant USERNAME operator` does, in this process (the CLI has its own test)."""
    AccountAdmin(api.server.database, Clock()).set_role(CLI_ACTOR, username, "operator", granted=True)


def detail(err: grpc.RpcError, kind):
    """The first detail of type ``kind`` in an error's google.rpc.Status, else None."""
    status = rpc_status.from_call(err)
    for packed in status.details if status else ():
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            return message
    return None


def reason(err: grpc.RpcError) -> str:
    info = detail(err, error_details_pb2.ErrorInfo)
    return info.reason if info else ""


def retry_seconds(err: grpc.RpcError) -> int | None:
    info = detail(err, error_details_pb2.RetryInfo)
    return info.retry_delay.seconds if info else None


def audit_rows(**where) -> list[dict]:
    """Audit rows straight from the database (oldest first), optionally filtered by column values."""
    query = AuditEvent.select().order_by(AuditEvent.id)
    for column, value in where.items():
        query = query.where(getattr(AuditEvent, column) == value)
    return [{**row.__data__, "summary": json.loads(row.summary)} for row in query]
