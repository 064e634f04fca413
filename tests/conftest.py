"""Fixtures: a real lending-grpc server on an ephemeral port over a fresh database, or BillingCore alone.

Every test that asks for ``database_url`` (directly or through ``server``,
``api``, ``alice``, ``env`` and ``owner``) runs twice: on a SQLite file and on
a PostgreSQL database of its own. What tests import is in helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import BACKENDS, PostgresDatabases, connect_or_skip, sqlite_url
from helpers import Api, Env, make_env, running_api
from hypothesis import settings as hypothesis_settings

from lending_grpc.core.storage.database import close_database
from lending_grpc.server import RunningServer

# CI explores the same examples on every run, so a red build always reproduces;
# local runs keep searching new ones.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    hypothesis_settings.load_profile("ci")


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
def api(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Api]:
    """A server with the test defaults, and stubs for it; ``@pytest.mark.settings(name=value)`` overrides."""
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    with running_api(tmp_path, database_url, **overrides) as running:
        yield running


@pytest.fixture
def server(api: Api) -> RunningServer:
    """The server behind ``api`` (same settings marker), for tests that bring their own channel."""
    return api.server


@pytest.fixture
def alice(api: Api):
    """Auth metadata of a freshly registered user."""
    metadata, _tokens, _user = api.register_and_login()
    return metadata


@pytest.fixture
def env(database_url: str) -> Iterator[Env]:
    """BillingCore and AuthCore on the test's database, without gRPC."""
    e = make_env(database_url)
    yield e
    close_database(e.db)


@pytest.fixture
def owner(env: Env) -> int:
    """The internal id of a freshly registered user of ``env``."""
    return env.new_owner()
