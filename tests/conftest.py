"""Shared fixtures: a real lending-grpc server on an ephemeral port over a fresh database.

Every test that asks for ``database_url`` (directly or through ``server``,
``api`` and ``alice``) runs twice: on a SQLite file and on a PostgreSQL
database of its own.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from databases import BACKENDS, PostgresDatabases, connect_or_skip, sqlite_url
from hypothesis import settings as hypothesis_settings
from lending.v1 import auth_pb2, auth_pb2_grpc, billing_pb2_grpc

from lending_grpc.config import Settings
from lending_grpc.server import RunningServer, create_server

# CI explores the same examples on every run, so a red build always reproduces;
# local runs keep searching new ones.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")

TEST_SECRET_KEY = "test-secret-key-of-at-least-32-bytes-000000"
TEST_DATA_KEY = "dGVzdC1kYXRhLWtleS0zMi1ieXRlcy0wMDAwMDAwMDA="  # base64 of 32 bytes


def make_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings for a test server: port 0, a fresh database file, cheap password hashing."""
    values = dict(
        listen="127.0.0.1:0",
        database_url=sqlite_url(tmp_path),
        secret_key=TEST_SECRET_KEY,
        data_key=TEST_DATA_KEY,
        insecure_fast_password_hash=True,
        shutdown_grace_seconds=1.0,
    )
    values.update(overrides)
    return Settings(**values)


@dataclasses.dataclass
class Api:
    """Stubs bound to one channel, plus helpers to create users."""

    channel: grpc.Channel
    auth: auth_pb2_grpc.AuthServiceStub
    billing: billing_pb2_grpc.BillingServiceStub
    server: RunningServer

    def register_and_login(
        self, username: str | None = None, password: str = "correct horse battery"
    ) -> tuple:
        """Register a fresh user and return (auth metadata, tokens, user)."""
        username = username or f"user-{uuid.uuid4().hex[:10]}"
        user = self.auth.Register(
            auth_pb2.RegisterRequest(username=username, password=password, email=f"{username}@example.com")
        )
        tokens = self.auth.Login(auth_pb2.LoginRequest(username=username, password=password))
        return (("authorization", f"Bearer {tokens.access_token}"),), tokens, user


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """The PostgreSQL test server; skipped (or, in CI, failed) when it cannot be reached."""
    databases = connect_or_skip()
    yield databases
    databases.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, then a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres")
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
def server(request, tmp_path: Path, database_url: str) -> Iterator[RunningServer]:
    """A server with the test defaults; ``@pytest.mark.settings(name=value)`` overrides some."""
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    running = create_server(make_settings(tmp_path, database_url=database_url, **overrides))
    yield running
    running.stop(0)


@pytest.fixture
def api(server: RunningServer) -> Iterator[Api]:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield Api(
        channel,
        auth_pb2_grpc.AuthServiceStub(channel),
        billing_pb2_grpc.BillingServiceStub(channel),
        server,
    )
    channel.close()


@pytest.fixture
def alice(api: Api):
    """Auth metadata of a freshly registered user."""
    metadata, _tokens, _user = api.register_and_login()
    return metadata
