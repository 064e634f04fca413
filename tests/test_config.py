"""Settings precedence, validation and the generated JWT key."""

from __future__ import annotations

import dataclasses
import re
import stat
from pathlib import Path

import pytest

from lending_grpc.config import ConfigError, Settings, load_settings, resolve_secret_key

SETTINGS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "operations" / "settings.md"


def test_precedence_is_flags_then_environment_then_dotenv_then_default(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\nLENDING_LISTEN=127.0.0.1:1111\nLENDING_TIME_ZONE='UTC'\n"
        'export LENDING_MAX_WORKERS="3"\n'
    )
    env = {"LENDING_LISTEN": "127.0.0.1:2222"}
    settings = load_settings({"listen": None, "max_workers": None}, env, dotenv)
    assert (settings.listen, settings.time_zone, settings.max_workers) == ("127.0.0.1:2222", "UTC", 3)
    settings = load_settings({"listen": "127.0.0.1:3333"}, env, dotenv)
    assert settings.listen == "127.0.0.1:3333"
    settings = load_settings({}, {}, tmp_path / "missing.env")
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:50051" and settings.time_zone == "Asia/Jakarta"


def test_the_settings_page_has_one_row_for_every_setting():
    """docs/operations/settings.md: a table row per setting, no row for a setting that does not exist."""
    rows = re.findall(r"^\| `(LENDING_[A-Z0-9_]+)`", SETTINGS_PAGE.read_text(), re.MULTILINE)
    assert sorted(rows) == sorted(Settings.env_name(field.name) for field in dataclasses.fields(Settings))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LENDING_MAX_WORKERS": "many"}, "LENDING_MAX_WORKERS: 'many' is not a valid int"),
        ({"LENDING_MAX_WORKERS": "0"}, "LENDING_MAX_WORKERS must be between 1 and 2147483647"),
        ({"LENDING_REFRESH_TOKEN_TTL_SECONDS": "3000000000"}, "must be between 1 and 2147483647"),
        ({"LENDING_SHUTDOWN_GRACE_SECONDS": "-5"}, "must be between 0 and 3600"),
        ({"LENDING_DATABASE_URL": "sqlite:///:memory:"}, "a file, not :memory:"),
        ({"LENDING_DATABASE_URL": "sqlite:///"}, "must be sqlite:///path/to/file.db"),
        ({"LENDING_INSECURE_FAST_PASSWORD_HASH": "maybe"}, "is not a valid bool"),
        ({"LENDING_DATABASE_URL": "mysql://x"}, "LENDING_DATABASE_URL: the database URL must be sqlite"),
        ({"LENDING_TIME_ZONE": "Mars/Olympus"}, "is not an IANA time zone"),
        ({"LENDING_SECRET_KEY": "k" * 40, "LENDING_SECRET_KEY_FILE": "/x"}, "not both"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({}, env, None)


def test_generated_key_is_private_stable_and_beside_the_database(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'data' / 'l.db'}")
    key = resolve_secret_key(settings)
    key_file = tmp_path / "data" / "l.db.jwt-key"
    assert len(key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert resolve_secret_key(settings) == key


def test_key_from_file_and_short_keys_refused(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("f" * 32 + "\n")
    assert resolve_secret_key(Settings(secret_key_file=str(key_file))) == b"f" * 32
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        resolve_secret_key(Settings(secret_key="s" * 31))
    with pytest.raises(ConfigError, match="cannot read LENDING_SECRET_KEY_FILE .*absent"):
        resolve_secret_key(Settings(secret_key_file=str(tmp_path / "absent")))


def test_the_key_and_the_key_file_are_one_setting_decided_by_the_first_source(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"LENDING_SECRET_KEY_FILE={tmp_path / 'key'}\n")
    settings = load_settings({}, {"LENDING_SECRET_KEY": "e" * 40}, dotenv)
    assert (settings.secret_key, settings.secret_key_file) == ("e" * 40, "")
    settings = load_settings({"secret_key_file": "/from/flag"}, {"LENDING_SECRET_KEY": "e" * 40}, dotenv)
    assert (settings.secret_key, settings.secret_key_file) == ("", "/from/flag")


def test_a_readable_key_file_is_used_with_a_warning(tmp_path, caplog):
    key_file = tmp_path / "key"
    key_file.write_text("w" * 40)
    key_file.chmod(0o644)
    assert resolve_secret_key(Settings(secret_key_file=str(key_file))) == b"w" * 40
    assert "readable by other users" in caplog.text


def test_every_start_on_a_generated_key_warns(tmp_path, caplog):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'l.db'}")
    resolve_secret_key(settings)
    caplog.clear()
    resolve_secret_key(settings)
    assert "using the generated JWT signing key" in caplog.text


def test_unknown_names_are_errors_in_the_environment_and_in_dotenv(tmp_path):
    """A typo in a secret's name must not start the service on a generated key."""
    key = "k" * 40
    with pytest.raises(ConfigError) as refused:
        load_settings({}, {"LENDING_SECRETKEY": key}, None)
    assert (
        str(refused.value)
        == "environment: unknown setting LENDING_SECRETKEY (did you mean LENDING_SECRET_KEY?)"
    )
    assert key not in str(refused.value)
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"LENDING_SECRETKEY={key}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings({}, {"LENDING_LISTN": "127.0.0.1:1"}, dotenv)
    assert str(refused.value) == (
        "environment: unknown setting LENDING_LISTN (did you mean LENDING_LISTEN?); "
        f"{dotenv}: unknown setting LENDING_SECRETKEY (did you mean LENDING_SECRET_KEY?)"
    )
    # Kubernetes' service links for a Service named "lending": refused too, saying how to turn them off.
    with pytest.raises(
        ConfigError, match=r"unknown setting LENDING_PORT \(Kubernetes sets it .*enableServiceLinks"
    ):
        load_settings({}, {"LENDING_PORT": "tcp://10.0.0.5:50051"}, None)


def test_the_clients_variables_are_known_names():
    """LENDING_SERVER & co. may be exported in the shell (or .env) that starts the server."""
    client = {
        "LENDING_SERVER": "127.0.0.1:50051",
        "LENDING_SERVER_TLS": "true",
        "LENDING_SERVER_CA_FILE": "ca.pem",
        "LENDING_CLIENT_CERT_FILE": "client.pem",
        "LENDING_CLIENT_KEY_FILE": "client.key",
    }
    assert load_settings({}, client, None) == Settings()


def test_an_empty_key_does_not_hide_a_key_from_a_later_source(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("LENDING_SECRET_KEY=" + "d" * 40 + "\n")
    settings = load_settings({}, {"LENDING_SECRET_KEY": "", "LENDING_SECRET_KEY_FILE": ""}, dotenv)
    assert (settings.secret_key, settings.secret_key_file) == ("d" * 40, "")


def test_a_key_file_others_can_write_is_refused(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("x" * 40)
    key_file.chmod(0o662)
    with pytest.raises(ConfigError, match="owned or writable by another user"):
        resolve_secret_key(Settings(secret_key_file=str(key_file)))
