"""Settings from command-line flags, then LENDING_* environment variables, then `.env`, then defaults."""

from __future__ import annotations

import base64
import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lending_grpc.addresses import AddressError, is_unix_socket, parse_host_port
from lending_grpc.core.crypto import DataKeyError, Sealer, new_key_text
from lending_grpc.core.storage.database import (
    DatabaseError,
    check_database_url,
    database_file,
    is_postgresql_url,
)
from lending_grpc.core.tokens import WeakSecretKey, check_keys

log = logging.getLogger(__name__)

ENV_PREFIX = "LENDING_"
DEFAULT_DATABASE_URL = "sqlite:///var/lending.db"


class ClientEnv:
    """Variables read by the command-line client, never by `serve`.

    They share the LENDING_ prefix with the server's settings, so one `.env`
    may hold both; a test makes sure no server setting ever takes one of these names.
    """

    SERVER = "LENDING_SERVER"
    SERVER_TLS = "LENDING_SERVER_TLS"
    SERVER_CA_FILE = "LENDING_SERVER_CA_FILE"
    CLIENT_CERT_FILE = "LENDING_CLIENT_CERT_FILE"
    CLIENT_KEY_FILE = "LENDING_CLIENT_KEY_FILE"


CLIENT_ENV_NAMES = (
    ClientEnv.SERVER,
    ClientEnv.SERVER_TLS,
    ClientEnv.SERVER_CA_FILE,
    ClientEnv.CLIENT_CERT_FILE,
    ClientEnv.CLIENT_KEY_FILE,
)


class ConfigError(ValueError):
    """A setting is missing, malformed or unsafe; the message says which and why."""


MAX_INT32 = 2**31 - 1
MAX_WORKER_PROCESSES = 64
MAX_BUSY_TIMEOUT_MS = 3_600_000


def _flag(default: Any, help_text: str, *, flag: bool = True) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text, "flag": flag})


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of the service. The environment name is LENDING_ + the field name in capitals."""

    listen: str = _flag("127.0.0.1:50051", "address to serve on, host:port (port 0 picks a free one)")
    database_url: str = _flag(
        DEFAULT_DATABASE_URL,
        "sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql://user@host:port/dbname",
    )
    # No command-line flag: a key in argv is visible to every local user (ps, /proc).
    secret_key: str = _flag(
        "",
        "JWT signing key (at least 32 bytes); one key per line to rotate, the signing key first",
        flag=False,
    )
    secret_key_file: str = _flag("", "file holding the JWT signing key(s), one per line (re-read on SIGHUP)")
    time_zone: str = _flag("Asia/Jakarta", "IANA time zone that defines 'today'")
    access_token_ttl_seconds: int = _flag(900, "access token lifetime")
    refresh_token_ttl_seconds: int = _flag(7 * 86400, "refresh token lifetime")
    workers: int = _flag(1, "server processes sharing the listen port (SO_REUSEPORT)")
    max_workers: int = _flag(16, "threads serving RPCs in each process")
    max_concurrent_rpcs: int = _flag(256, "RPCs in progress before new ones get RESOURCE_EXHAUSTED")
    max_message_bytes: int = _flag(1024 * 1024, "largest request or response message")
    db_busy_timeout_ms: int = _flag(10_000, "how long a write waits for a lock (SQLite file, PostgreSQL row)")
    db_pool_size: int = _flag(8, "PostgreSQL connections per process (a bounded pool)")
    shutdown_grace_seconds: float = _flag(10.0, "how long in-flight RPCs may finish after SIGTERM")
    drain_delay_seconds: float = _flag(1.0, "how long health says NOT_SERVING before new calls are refused")
    log_level: str = _flag("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _flag("text", "text, or json for one JSON object per line")
    # Transport security: TLS, mTLS, and the explicit opt-out for plaintext off loopback.
    tls_cert: str = _flag("", "PEM certificate chain to serve TLS with (needs --tls-key)")
    tls_key: str = _flag("", "PEM private key of --tls-cert")
    tls_client_ca: str = _flag("", "PEM CA bundle: require client certificates signed by it (mTLS)")
    insecure: bool = _flag(False, "allow plaintext on a non-loopback address (behind a TLS-terminating mesh)")
    # Rate limits: in-process token buckets; a rate of 0 turns that limit off.
    rate_limit_user_per_second: float = _flag(100.0, "sustained requests per second per user (0 = off)")
    rate_limit_user_burst: int = _flag(200, "requests a user may send at once before being throttled")
    rate_limit_peer_per_second: float = _flag(500.0, "sustained requests per second per peer IP (0 = off)")
    rate_limit_peer_burst: int = _flag(1000, "requests one peer IP may send at once before being throttled")
    metrics_listen: str = _flag("", "host:port of the Prometheus /metrics endpoint (empty = off)")
    insecure_fast_password_hash: bool = _flag(False, "TESTS ONLY: cheap argon2 parameters")
    # Personal data at rest (emails): AES-256-GCM keys, never on the command line.
    data_key: str = _flag(
        "", "data encryption key(s): base64 of 32 bytes, '2:NEW,1:OLD' to rotate", flag=False
    )
    data_key_file: str = _flag("", "file holding the data encryption key(s) (re-read on SIGHUP)")
    key_poll_seconds: float = _flag(
        0.0, "also re-read the *_FILE keys when they change, checking this often (0 = only on SIGHUP)"
    )
    # The DSN holds the project's key: no flag (visible in ps), and never logged whole.
    sentry_dsn: str = _flag("", "report INTERNAL errors to this Sentry DSN (empty = off)", flag=False)
    sentry_environment: str = _flag("", "the environment Sentry files the errors under (e.g. production)")
    login_max_failures: int = _flag(5, "failed sign-ins within the window that lock an account")
    login_failure_window_seconds: int = _flag(900, "window in which failed sign-ins are counted")
    login_lockout_seconds: int = _flag(300, "first lockout; each further one doubles")
    login_lockout_max_seconds: int = _flag(86400, "longest lockout")
    daily_close: bool = _flag(
        True, "close each day in the server after midnight (off: run `lending-grpc close-day` on a schedule)"
    )
    auth_cache_seconds: float = _flag(
        5.0, "how long a process trusts its cached user role/erasure and token revocation state"
    )

    @classmethod
    def env_name(cls, field_name: str) -> str:
        return ENV_PREFIX + field_name.upper()


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file; blank lines and # comments skipped, quotes stripped."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _convert(field: dataclasses.Field, text: str, source: str) -> Any:
    kind = type(field.default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(text)
            return lowered in {"1", "true", "yes", "on"}
        return kind(text)
    except ValueError:
        raise ConfigError(f"{source}: {text!r} is not a valid {kind.__name__}") from None


_SOURCES = ("command line", "environment", ".env")
# Each pair (inline value, file) is one setting.
_KEY_PAIRS = (("secret_key", "secret_key_file"), ("data_key", "data_key_file"))
_KEY_SETTINGS = tuple(name for pair in _KEY_PAIRS for name in pair)


# What Kubernetes injects for a Service named "lending" unless the pod sets enableServiceLinks: false.
_SERVICE_LINK = re.compile(
    r"LENDING_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)


def known_names() -> list[str]:
    """Every LENDING_* name something of ours reads: the server's settings and the clients' variables."""
    return [Settings.env_name(field.name) for field in dataclasses.fields(Settings)] + list(CLIENT_ENV_NAMES)


def _unknown_names(names, source: str) -> list[str]:
    # The client commands' variables (LENDING_SERVER, ...) may live in the same .env or shell.
    known = known_names()
    problems = []
    for name in sorted(names):
        if name.startswith(ENV_PREFIX) and name not in known:
            if _SERVICE_LINK.fullmatch(name):
                hint = (
                    " (Kubernetes sets it for a Service named 'lending': "
                    "set enableServiceLinks: false in the pod spec)"
                )
            else:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{source}: unknown setting {name}{hint}")
    return problems


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
) -> Settings:
    """Merge flags (already typed, None = not given), environment, .env and defaults.

    The first source that sets a value wins. The inline key and the key file
    are one setting: the first source that sets either (non-empty) decides.
    An unknown LENDING_* name, in the environment or in `.env`, is an error
    naming the nearest known one: a typo such as LENDING_SECRETKEY must not
    start a financial service on a generated key. (Kubernetes injects
    LENDING_PORT and friends for a Service named "lending"; the manifests
    turn those service links off, and the message says how.)
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    file_values = read_dotenv(dotenv) if dotenv else {}
    problems = _unknown_names(environ, "environment") + _unknown_names(file_values, str(dotenv))
    if problems:
        raise ConfigError("; ".join(problems))
    chosen: dict[str, Any] = {}
    rank: dict[str, int] = {}
    for field in dataclasses.fields(Settings):
        env = Settings.env_name(field.name)
        # An empty key (say, an unset variable interpolated by compose) is not a key.
        skip_empty = field.name in _KEY_SETTINGS
        if flags.get(field.name) is not None and not (skip_empty and not flags[field.name]):
            chosen[field.name], rank[field.name] = flags[field.name], 0
        elif env in environ and not (skip_empty and not environ[env]):
            chosen[field.name], rank[field.name] = _convert(field, environ[env], env), 1
        elif env in file_values and not (skip_empty and not file_values[env]):
            chosen[field.name], rank[field.name] = _convert(field, file_values[env], f"{dotenv}: {env}"), 2
    for pair in _KEY_PAIRS:
        key_ranks = {rank[name] for name in pair if name in chosen}
        if len(key_ranks) == 2:
            del chosen[max(pair, key=lambda name: rank[name])]
        elif all(name in chosen for name in pair):
            inline, file = (Settings.env_name(name) for name in pair)
            raise ConfigError(f"{_SOURCES[key_ranks.pop()]}: set {inline} or {file}, not both")
    settings = Settings(**chosen)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Refuse settings that cannot work, before anything starts."""
    for name in (
        "access_token_ttl_seconds",
        "refresh_token_ttl_seconds",
        "max_workers",
        "max_concurrent_rpcs",
        "max_message_bytes",
        "db_pool_size",
        "login_max_failures",
        "login_failure_window_seconds",
        "login_lockout_seconds",
        "login_lockout_max_seconds",
    ):
        if not 0 < getattr(settings, name) <= MAX_INT32:
            raise ConfigError(f"{Settings.env_name(name)} must be between 1 and {MAX_INT32}")
    if settings.login_lockout_max_seconds < settings.login_lockout_seconds:
        raise ConfigError("LENDING_LOGIN_LOCKOUT_MAX_SECONDS must not be below LENDING_LOGIN_LOCKOUT_SECONDS")
    # PostgreSQL's statement_timeout is set to three times this: keep it well inside an int32.
    if not 0 < settings.db_busy_timeout_ms <= MAX_BUSY_TIMEOUT_MS:
        raise ConfigError(
            f"LENDING_DB_BUSY_TIMEOUT_MS must be between 1 and {MAX_BUSY_TIMEOUT_MS} (one hour)"
        )
    for name in ("shutdown_grace_seconds", "drain_delay_seconds", "auth_cache_seconds", "key_poll_seconds"):
        if not 0 <= getattr(settings, name) <= 3600:
            raise ConfigError(f"{Settings.env_name(name)} must be between 0 and 3600")
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{Settings.env_name('log_level')} must be DEBUG, INFO, WARNING or ERROR")
    if settings.log_format not in {"text", "json"}:
        raise ConfigError(f"{Settings.env_name('log_format')} must be text or json")
    if not 1 <= settings.workers <= MAX_WORKER_PROCESSES:
        raise ConfigError(f"LENDING_WORKERS must be between 1 and {MAX_WORKER_PROCESSES}")
    _validate_rate_limits(settings)
    _check_address(settings.listen, "LENDING_LISTEN", unix_allowed=True)
    if settings.metrics_listen:
        _check_address(settings.metrics_listen, "LENDING_METRICS_LISTEN")
    _validate_transport(settings)
    try:
        check_database_url(settings.database_url)
    except DatabaseError as exc:
        raise ConfigError(f"LENDING_DATABASE_URL: {exc}") from None
    try:
        ZoneInfo(settings.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"LENDING_TIME_ZONE {settings.time_zone!r} is not an IANA time zone") from None
    if settings.secret_key and settings.secret_key_file:
        raise ConfigError("set LENDING_SECRET_KEY or LENDING_SECRET_KEY_FILE, not both")
    if settings.data_key and settings.data_key_file:
        raise ConfigError("set LENDING_DATA_KEY or LENDING_DATA_KEY_FILE, not both")
    if settings.sentry_dsn:
        check_sentry_dsn(settings.sentry_dsn)
    # Sentry's own rules for environment names.
    environment = settings.sentry_environment
    if len(environment) > 64 or environment == "None" or any(c in environment for c in " /\r\n\t"):
        raise ConfigError(
            "LENDING_SENTRY_ENVIRONMENT must be at most 64 characters without spaces or slashes"
        )


def check_sentry_dsn(dsn: str) -> None:
    """ConfigError unless ``dsn`` reads like a Sentry DSN; the message never repeats the DSN (a key)."""
    problem = "must look like https://PUBLIC_KEY@HOST/PROJECT_ID"
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        raise ConfigError(f"LENDING_SENTRY_DSN {problem}") from None
    project = parts.path.rstrip("/").rpartition("/")[2]
    if parts.scheme not in ("http", "https") or not parts.username or not parts.hostname or not project:
        raise ConfigError(f"LENDING_SENTRY_DSN {problem}")


def redact_dsn(dsn: str) -> str:
    """The DSN without its key(s), for logs: ``https://***@o1.ingest.sentry.io/5``."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://***@{host}{parts.path}"


def parse_secret_keys(raw: bytes, where: str) -> tuple[bytes, ...]:
    """JWT keys from a setting or file: one key per line, the signing key first, blank lines skipped.

    A single line is taken as it is, and bytes that are not UTF-8 text are
    one binary key: every key that worked before rotation existed still means
    the same key. ConfigError names ``where`` and never shows a key.
    """
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = []
    if len(lines) <= 1:
        keys: tuple[bytes, ...] = (raw,)
    else:
        keys = tuple(line.strip().encode("utf-8") for line in lines if line.strip())
    try:
        check_keys(keys)
    except WeakSecretKey as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return keys


def read_secret_key_file(path: str) -> tuple[bytes, ...]:
    """The JWT keys in LENDING_SECRET_KEY_FILE ``path`` (ConfigError if unreadable, unsafe or invalid)."""
    return parse_secret_keys(_read_key_file(Path(path), "LENDING_SECRET_KEY_FILE"), path)


def read_data_key_file(path: str) -> Sealer:
    """A sealer for the data keys in LENDING_DATA_KEY_FILE ``path`` (ConfigError if unusable)."""
    raw = _read_key_file(Path(path), "LENDING_DATA_KEY_FILE")
    try:
        return Sealer.from_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not text (base64 keys, '2:NEW,1:OLD' to rotate)") from None
    except DataKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def resolve_secret_keys(settings: Settings) -> tuple[bytes, ...]:
    """The JWT keys, the signing key first: inline, from a file, or generated once beside the SQLite file."""
    if settings.secret_key:
        return parse_secret_keys(settings.secret_key.encode("utf-8"), "LENDING_SECRET_KEY")
    if settings.secret_key_file:
        return read_secret_key_file(settings.secret_key_file)
    key = _generated_key(
        settings.database_url,
        "LENDING_SECRET_KEY",
        suffix=".jwt-key",
        what="JWT signing key",
        advice="set LENDING_SECRET_KEY or LENDING_SECRET_KEY_FILE in production",
    )
    return parse_secret_keys(key, "the generated JWT signing key")


def resolve_secret_key(settings: Settings) -> bytes:
    """The JWT signing key (the first of ``resolve_secret_keys``)."""
    return resolve_secret_keys(settings)[0]


def resolve_data_key(settings: Settings) -> Sealer:
    """The sealer for personal data: key(s) inline, from a file, or generated once beside the SQLite file."""
    if settings.data_key:
        text, where = settings.data_key, "LENDING_DATA_KEY"
    elif settings.data_key_file:
        return read_data_key_file(settings.data_key_file)
    else:
        generated = _generated_key(
            settings.database_url,
            "LENDING_DATA_KEY",
            suffix=".data-key",
            what="data encryption key",
            advice=(
                "back it up (emails cannot be read without it) and set LENDING_DATA_KEY_FILE in production"
            ),
            content=lambda: new_key_text().encode("ascii"),
        )
        text, where = generated.decode("utf-8"), "the generated data key"
    try:
        return Sealer.from_text(text)
    except DataKeyError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _read_key_file(path: Path, setting: str) -> bytes:
    try:
        info = path.stat()
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {setting} {path}: {exc.strerror}") from None
    # Whoever can replace the key can forge tokens for every user.
    if info.st_uid not in (os.geteuid(), 0) or info.st_mode & 0o022:
        raise ConfigError(f"{setting} {path} is owned or writable by another user; refusing it")
    if info.st_mode & 0o044:
        log.warning("key file %s is readable by other users; chmod 600 it", path)
    return key


def _generated_key(
    database_url: str,
    setting: str,
    *,
    suffix: str,
    what: str,
    advice: str,
    content: Callable[[], bytes] | None = None,
) -> bytes:
    """A key generated once beside the SQLite file as ``<db file><suffix>``; never with PostgreSQL.

    ``setting`` names the variable that should have been set (its ``_FILE``
    twin is named too); ``content`` makes a new key's text (default: random).
    """
    if is_postgresql_url(database_url):
        # Processes on several machines must share one key: none can be generated locally.
        raise ConfigError(f"with PostgreSQL, set {setting} or {setting}_FILE")
    try:
        db_path = database_file(database_url)
    except DatabaseError as exc:
        raise ConfigError(str(exc)) from None
    key_path = db_path.with_name(db_path.name + suffix)
    if not key_path.exists():
        _write_new_key(key_path, content() if content else None)
    log.warning("no %s set: using the generated %s in %s; %s", setting, what, key_path, advice)
    return _read_key_file(key_path, f"generated {what}")


def _write_new_key(key_path: Path, content: bytes | None = None) -> None:
    """Create a random key file, mode 0600, safe against a concurrent start and planted symlinks."""
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written to a private temporary file, then hard-linked into place, so a
    # process starting at the same moment never reads a half-written key.
    tmp_path = key_path.with_name(f"{key_path.name}.{os.getpid()}.tmp")
    tmp_path.unlink(missing_ok=True)
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write((content or base64.urlsafe_b64encode(secrets.token_bytes(48))) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp_path, key_path)
    except FileExistsError:
        pass  # another process won the race: its key is used
    finally:
        tmp_path.unlink(missing_ok=True)


def _validate_rate_limits(settings: Settings) -> None:
    for scope in ("user", "peer"):
        rate = getattr(settings, f"rate_limit_{scope}_per_second")
        burst = getattr(settings, f"rate_limit_{scope}_burst")
        if not 0 <= rate <= 1_000_000:
            raise ConfigError(
                f"{Settings.env_name(f'rate_limit_{scope}_per_second')} must be between 0 (off) and 1000000"
            )
        if not 1 <= burst <= 1_000_000:
            raise ConfigError(
                f"{Settings.env_name(f'rate_limit_{scope}_burst')} must be between 1 and 1000000"
            )


def _check_address(address: str, setting: str, *, unix_allowed: bool = False) -> None:
    """ConfigError naming ``setting`` and the address unless it is HOST:PORT (port 0: any free port)."""
    if unix_allowed and is_unix_socket(address):
        return
    try:
        parse_host_port(address, allow_port_zero=True)
    except AddressError as exc:
        raise ConfigError(f"{setting} {address!r}: {exc}") from None


def is_loopback(listen: str) -> bool:
    """Whether a listen address only accepts connections from this machine."""
    if is_unix_socket(listen):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _validate_transport(settings: Settings) -> None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("LENDING_TLS_CERT and LENDING_TLS_KEY must be set together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ConfigError("LENDING_TLS_CLIENT_CA (mTLS) needs LENDING_TLS_CERT and LENDING_TLS_KEY")
    if not settings.tls_cert and not settings.insecure and not is_loopback(settings.listen):
        raise ConfigError(
            f"refusing plaintext on the non-loopback address {settings.listen}: serve TLS with "
            "--tls-cert/--tls-key, or pass --insecure (LENDING_INSECURE=true) when a proxy or "
            "service mesh terminates TLS in front of the service"
        )
