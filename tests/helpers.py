"""Everything the tests import. The fixtures built on it are in conftest.py; databases.py makes databases.

Sections: a server in this process; calls and error details; users and tokens; billing calls with the
payment tests' defaults; several channels and processes; BillingCore without gRPC; server child
processes; TLS certificates.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import os
import re
import selectors
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from databases import sqlite_url
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from lending.v1 import audit_pb2_grpc, auth_pb2, auth_pb2_grpc, billing_pb2, billing_pb2_grpc

from lending_grpc.client import LendingClient
from lending_grpc.config import Settings
from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.auth import AuthCore
from lending_grpc.core.billing import BillingCore
from lending_grpc.core.clock import Clock
from lending_grpc.core.crypto import Sealer, new_key_text
from lending_grpc.core.delinquency import DelinquencyCore
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.passwords import Passwords
from lending_grpc.core.storage.database import open_database, sqlite_path
from lending_grpc.core.storage.migrations import migrate
from lending_grpc.core.storage.models import AuditEvent
from lending_grpc.core.tokens import TokenSigner
from lending_grpc.core.views import Actor, Principal
from lending_grpc.server import RunningServer, create_server

# -- a server in this process, on an ephemeral port --------------------------------------


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
    audit: audit_pb2_grpc.AuditServiceStub

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


@contextlib.contextmanager
def running_api(tmp_path: Path, database_url: str | None = None, **overrides) -> Iterator[Api]:
    """A real server with settings ``overrides`` on ``database_url`` (default: a SQLite file in ``tmp_path``).

    The ``api`` and ``server`` fixtures are this with ``@pytest.mark.settings`` overrides; call it yourself
    for a second server, a restart on the same database, or a server inside a fixture.
    """
    if database_url is not None:
        overrides["database_url"] = database_url
    server = create_server(make_settings(tmp_path, **overrides))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Api(
            channel,
            auth_pb2_grpc.AuthServiceStub(channel),
            billing_pb2_grpc.BillingServiceStub(channel),
            server,
            audit_pb2_grpc.AuditServiceStub(channel),
        )
    finally:
        channel.close()
        server.stop(0)


# -- calls and error details -------------------------------------------------------------


JAKARTA = zoneinfo.ZoneInfo("Asia/Jakarta")


def today() -> dt.date:
    """Today in the service's default time zone."""
    return dt.datetime.now(JAKARTA).date()


def tamper(token: str) -> str:
    """Change the first character of a page token's signature part (it carries six significant bits)."""
    index = token.index(".") + 1
    return token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]


def call_error(method, request, **kwargs) -> grpc.RpcError:
    """Call a stub method that must fail and return its error."""
    with pytest.raises(grpc.RpcError) as info:
        method(request, **kwargs)
    return info.value


def violated_fields(err: grpc.RpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details of an error (status must be consistent)."""
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    assert status.code == err.code().value[0]
    assert status.message == err.details()
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def assert_invalid(err: grpc.RpcError, field: str) -> None:
    """INVALID_ARGUMENT naming exactly ``field``, in the details and in the message."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert violated_fields(err) == [field], err.details()
    assert field in err.details()


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
    """The ErrorInfo reason of an error ('' when it has none)."""
    info = detail(err, error_details_pb2.ErrorInfo)
    return info.reason if info else ""


def retry_seconds(err: grpc.RpcError) -> int | None:
    info = detail(err, error_details_pb2.RetryInfo)
    return info.retry_delay.seconds if info else None


def health_status(channel: grpc.Channel) -> int:
    """Health status over ``channel``; raises grpc.RpcError when the connection fails."""
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


# -- users and tokens --------------------------------------------------------------------


PASSWORD = "correct horse battery"
CLI_ACTOR = Actor(name="cli:test", rpc="lending-grpc users grant")  # as the operator command records


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def register(api, username: str, password: str = PASSWORD, email: str | None = None):
    return api.auth.Register(
        auth_pb2.RegisterRequest(
            username=username, password=password, email=email or f"{uuid.uuid4().hex[:8]}@example.com"
        )
    )


def login(api: Api, username: str, password: str = PASSWORD):
    return api.auth.Login(auth_pb2.LoginRequest(username=username, password=password))


def grant_operator(target, username: str) -> None:
    """What `lending-grpc users grant USERNAME operator` does, in this process (the CLI has its own test).

    ``target`` is an `Api` (its server's database) or a database.
    """
    database = target.server.database if isinstance(target, Api) else target
    AccountAdmin(database, Clock()).set_role(CLI_ACTOR, username, "operator", granted=True)


def sign_up(target: str, username: str) -> tuple[LendingClient, str]:
    """Register ``username`` on ``target``; an SDK client that logs itself in, and the user's public id."""
    with LendingClient(target) as bootstrap:
        user = bootstrap.register(username, PASSWORD, f"{username}@example.com")
    return LendingClient(target, username=username, password=PASSWORD), user.user_id


class Cli:
    """`python -m lending_grpc ...` as a person types it: their own token cache, LENDING_SERVER set."""

    def __init__(self, server: str, home: Path) -> None:
        self.server = server
        self.home = home
        self.config = home / "config"
        home.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LENDING_")}
        environ.update(XDG_CONFIG_HOME=str(self.config), LENDING_SERVER=self.server)
        environ.update(extra)  # a test may point LENDING_SERVER elsewhere
        return environ

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lending_grpc", *args]

    def __call__(
        self, *args: str, stdin: str | None = None, ok: bool = True, one_line: bool = True, **env: str
    ) -> subprocess.CompletedProcess:
        """Run one command; ``ok`` (exit 0, nothing on stderr) or a one-line refusal without a traceback."""
        result = subprocess.run(
            self.command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(**env),
            cwd=self.home,
        )
        if ok:
            assert (result.returncode, result.stderr) == (0, ""), result.stderr
        else:
            assert result.returncode != 0, result.stdout
            assert "Traceback" not in result.stderr, result.stderr
            if one_line:
                assert result.stderr.count("\n") == 1, result.stderr
        return result

    def logged_in(self, username: str = "ada") -> Cli:
        """Register ``username`` and log in as it."""
        self("register", username, "--email", f"{username}@example.com", "--password-stdin", stdin=PASSWORD)
        return self.log_in(username)

    def log_in(self, username: str) -> Cli:
        """Log in as an existing user (tokens cached under this person's home)."""
        self("login", username, "--password-stdin", stdin=PASSWORD + "\n")
        return self

    @property
    def token_file(self) -> Path:
        return self.config / "lending-grpc" / "tokens.json"


def audit_rows(**where) -> list[dict]:
    """Audit rows straight from the database (oldest first), optionally filtered by column values."""
    query = AuditEvent.select().order_by(AuditEvent.id)
    for column, value in where.items():
        query = query.where(getattr(AuditEvent, column) == value)
    return [{**row.__data__, "summary": json.loads(row.summary)} for row in query]


def jwt_payload(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# -- billing calls, with the payment tests' defaults (loan L1: 5,000,000 from 2026-01-05) ---


def create(api, metadata, loan_id="L1", principal="5000000", start_date="2026-01-05", **kwargs):
    return api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(
            loan_id=loan_id, principal_amount=principal, start_date=start_date, **kwargs
        ),
        metadata=metadata,
    )


def pay(api, metadata, amount, loan_id="L1", request_id="") -> billing_pb2.Payment:
    return api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, request_id=request_id),
        metadata=metadata,
    )


def outstanding(api, metadata, loan_id="L1") -> billing_pb2.Outstanding:
    return api.billing.GetOutstanding(billing_pb2.GetOutstandingRequest(loan_id=loan_id), metadata=metadata)


def get(api, metadata, loan_id="L1") -> billing_pb2.Loan:
    return api.billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=loan_id), metadata=metadata)


def payments(api, metadata, loan_id="L1", page_size=0, page_token="") -> billing_pb2.ListPaymentsResponse:
    return api.billing.ListPayments(
        billing_pb2.ListPaymentsRequest(loan_id=loan_id, page_size=page_size, page_token=page_token),
        metadata=metadata,
    )


def assert_balanced(api, metadata, loan_id="L1") -> billing_pb2.Outstanding:
    """Outstanding + paid == total, and both agree with GetLoan and the ledger."""
    out = outstanding(api, metadata, loan_id)
    loan = get(api, metadata, loan_id)
    assert Decimal(out.outstanding_balance) + Decimal(out.paid_amount) == Decimal(out.total_amount)
    assert out.total_amount == loan.total_amount
    assert out.outstanding_balance == loan.outstanding_balance
    assert out.paid_amount == loan.paid_amount
    assert out.installments_paid == loan.installments_paid
    assert out.installments_paid + out.installments_remaining == loan.term_weeks
    ledger = payments(api, metadata, loan_id, page_size=500).payments
    assert sum((Decimal(p.amount) for p in ledger), Decimal("0.00")) == Decimal(out.paid_amount)
    return out


def list_loans(api, metadata, page_size=0, page_token="") -> billing_pb2.ListLoansResponse:
    return api.billing.ListLoans(
        billing_pb2.ListLoansRequest(page_size=page_size, page_token=page_token), metadata=metadata
    )


# -- several channels, several server processes ------------------------------------------


def pay_on_own_channel(
    target: str, metadata, loan_id: str, amount: str, request_id: str, start: threading.Barrier | None = None
):
    """MakePayment on a channel of its own (so calls really race at the server); the Payment or the code.

    With ``start``, the call waits at the barrier once its channel is open, so racers leave together.
    """
    with grpc.insecure_channel(target) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        if start is not None:
            start.wait()
        try:
            return stub.MakePayment(
                billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, request_id=request_id),
                metadata=metadata,
                timeout=60,
            )
        except grpc.RpcError as err:
            return err.code()


WEEKLY = "110000.00"


def user_on(target: str):
    name = f"mp-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        auth.Register(
            auth_pb2.RegisterRequest(username=name, password="multi-process", email=f"{name}@ex.com")
        )
        tokens = auth.Login(auth_pb2.LoginRequest(username=name, password="multi-process"))
    return (("authorization", f"Bearer {tokens.access_token}"),)


def create_on(target: str, metadata, loan_id: str, term_weeks: int = 50) -> None:
    """A loan paying 110,000.00 a week (principal 100,000 per week of term, 10% flat)."""
    with grpc.insecure_channel(target) as channel:
        billing_pb2_grpc.BillingServiceStub(channel).CreateLoan(
            billing_pb2.CreateLoanRequest(
                loan_id=loan_id,
                principal_amount=str(100_000 * term_weeks),
                term_weeks=term_weeks,
                start_date="2026-01-05",
            ),
            metadata=metadata,
        )


def read_on(target: str, metadata, loan_id: str):
    with grpc.insecure_channel(target) as channel:
        billing = billing_pb2_grpc.BillingServiceStub(channel)
        loan = billing.GetLoan(billing_pb2.GetLoanRequest(loan_id=loan_id), metadata=metadata)
        payments = billing.ListPayments(
            billing_pb2.ListPaymentsRequest(loan_id=loan_id, page_size=500), metadata=metadata
        ).payments
    return loan, list(payments)


def cents(text: str) -> int:
    units, _, frac = text.partition(".")
    return int(units) * 100 + int(frac or 0)


# -- BillingCore without gRPC (the `env` and `owner` fixtures) ---------------------------


START = "2026-01-05"
START_DATE = dt.date(2026, 1, 5)
ANONYMOUS = Actor()  # what the core is told for Register and Login


def actor_of(owner: int) -> Actor:
    """The actor for a user known by internal id (the audit trail records a made-up public id)."""
    return Actor(principal=Principal(owner, f"user-{owner}"), name=f"user-{owner}")


class FixedClock(Clock):
    """A clock whose "today" is fixed, so refusal hints are deterministic."""

    def __init__(self, today: dt.date) -> None:
        super().__init__()
        self._today = today

    def today(self) -> dt.date:
        return self._today


@dataclasses.dataclass
class Env:
    db: object
    auth: AuthCore
    billing: BillingCore
    delinquency: DelinquencyCore

    def new_owner(self) -> int:
        name = f"user-{uuid.uuid4().hex[:12]}"
        user = self.auth.register(ANONYMOUS, name, "correct horse battery", f"{name}@example.com")
        return self.auth.principal(user.user_id).id


def make_env(database_url: str, clock: Clock | None = None) -> Env:
    db = open_database(database_url)
    migrate(db)
    clock = clock or Clock()
    sealer = Sealer.from_text(new_key_text())
    auth = AuthCore(db, clock, Passwords(fast_insecure=True), TokenSigner(b"x" * 32), sealer)
    tokens = PageTokens(b"k" * 32)
    billing = BillingCore(db, clock, tokens)
    return Env(db, auth, billing, DelinquencyCore(db, clock, tokens, billing))


def all_payments(env: Env, owner: int, loan_id: str) -> list:
    items, token = [], ""
    while True:
        page = env.billing.list_payments(owner, loan_id, page_size=7, page_token=token)
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items


def snapshot(env: Env, owner: int, loan_id: str):
    """Everything observable about a loan, for before/after comparisons."""
    return (
        env.billing.get_loan(owner, loan_id),
        env.billing.get_schedule(owner, loan_id),
        tuple(all_payments(env, owner, loan_id)),
    )


# -- server child processes (`lending-grpc serve`, `python -m lending_grpc ...`) ---------


_SERVING = re.compile(r"serving on [^\s]+:(\d+)")


def child_env(**settings: str) -> dict[str, str]:
    """The environment for a child server: the caller's, minus any LENDING_* of the developer's own."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LENDING_")}
    env.update(
        LENDING_SECRET_KEY=TEST_SECRET_KEY,
        LENDING_DATA_KEY=TEST_DATA_KEY,
        LENDING_INSECURE_FAST_PASSWORD_HASH="true",
        LENDING_DRAIN_DELAY_SECONDS="0.2",
    )
    env.update(settings)
    return env


def run_cli(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    """Run `python -m lending_grpc ARGS` to completion in ``cwd`` with a clean test environment."""
    return subprocess.run(
        [sys.executable, "-m", "lending_grpc", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(**settings),
        cwd=cwd,
    )


class ServerProcess:
    """A `python -m lending_grpc serve` child on an ephemeral port; its log is collected."""

    def __init__(self, database: Path | str, *extra_args: str, env: dict[str, str] | None = None) -> None:
        """Serve ``database``: a SQLite file path or any database URL."""
        url = database if isinstance(database, str) else f"sqlite:///{database}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lending_grpc",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                url,
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(**(env or {})),
            cwd=tempfile.mkdtemp(),  # an empty directory: no stray .env from the developer's checkout
        )
        self.log: list[str] = []
        self._port: int | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(30) or self._port is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.port = self._port
        self.target = f"127.0.0.1:{self.port}"

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            match = _SERVING.search(line)
            if match:
                self._port = int(match.group(1))
                self._ready.set()
        self._ready.set()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a power cut of the process."""
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int | None:
        """SIGTERM and wait for the graceful exit; returns the exit code (None if it had to be killed)."""
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def wait_gone(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)


# -- TLS certificates: a throwaway CA and the leaf certificates it signs -----------------


@dataclasses.dataclass
class Issued:
    """A certificate and its key, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


def _issue(subject: str, issuer: Issued | None, *, ca: bool, server: bool = False) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Issued(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert,
        key,
    )


def make_ca(name: str) -> Issued:
    """A self-signed certificate authority."""
    return _issue(name, None, ca=True)


def make_server_cert(ca: Issued) -> Issued:
    """A server certificate for localhost and 127.0.0.1, signed by ``ca``."""
    return _issue("localhost", ca, ca=False, server=True)


def make_client_cert(ca: Issued, name: str = "billing-client") -> Issued:
    """A client certificate signed by ``ca``."""
    return _issue(name, ca, ca=False)


# -- faults: every RPC thread, metrics, a cuttable TCP proxy ------------------------------------


def on_every_rpc_thread(running: RunningServer, work: Callable[[], None]) -> None:
    """Run ``work`` once on each of the server's RPC threads (each has its own SQLite connection).

    As many tasks as the pool has threads, each waiting at a barrier until all
    have started: no thread can take two, so every thread runs one.
    """
    threads = running.executor._max_workers
    barrier = threading.Barrier(threads)

    def task() -> None:
        barrier.wait(10)
        work()

    for future in [running.executor.submit(task) for _ in range(threads)]:
        future.result(10)


def scrape(running: RunningServer) -> str:
    """The server's /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics.port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a /metrics text (0 when the series does not exist yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))).strip(",") == wanted:
            return float(match.group(2))
    return 0.0


class CuttableProxy:
    """A TCP proxy to ``target`` on 127.0.0.1:<port> that a test can cut and restore.

    Cutting closes every proxied connection and refuses new ones (the port
    stops listening), as when the database server's host or network goes
    down; restoring listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._stopped = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._peers: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._run, name="cuttable-proxy", daemon=True)
        self._thread.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the proxy thread (the selector is not thread-safe) and wait for it."""
        done = threading.Event()
        with self._lock:
            self._pending = (action, done)
            self._wake_w.send(b"x")
        if not done.wait(10):
            raise RuntimeError("the proxy thread did not answer")

    def cut(self) -> None:
        """Close every connection through the proxy and stop accepting new ones."""

        def action() -> None:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._peers):
                self._drop(sock)

        self._call(action)

    def restore(self) -> None:
        """Listen again on the same port."""

        def action() -> None:
            if self._listener is None:
                self._listener = self._listen(self.port)
                self._selector.register(self._listener, selectors.EVENT_READ, "accept")

        self._call(action)

    def close(self) -> None:
        self.cut()
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(5)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._peers.pop(one, None)
            try:
                self._selector.unregister(one)
            except (KeyError, ValueError):
                pass
            try:
                # An abortive close (RST), like a host that went away, not a polite FIN.
                one.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            one.close()

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                    with self._lock:
                        pending, self._pending = getattr(self, "_pending", None), None
                    if pending is not None:
                        action, done = pending
                        action()
                        done.set()
                elif key.data == "accept":
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        for one in (client, upstream):
            one.setblocking(False)
            one.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peers[client], self._peers[upstream] = upstream, client
        self._selector.register(client, selectors.EVENT_READ, "pipe")
        self._selector.register(upstream, selectors.EVENT_READ, "pipe")

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        self._drop(sock)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``condition`` until it holds; the seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    return None


# -- Prometheus alert rules (deploy/prometheus) -------------------------------------------------

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
ALERT_RULES = RULES_DIR / "lending-grpc.rules.yml"
FLOOR_RULES = RULES_DIR / "tkb90-floor.rules.yml"
RULE_FILES = [ALERT_RULES, FLOOR_RULES]


def run_tool(args: list, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run an external tool to completion; its output captured as text."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)


def alert_rules(path: Path = ALERT_RULES) -> list[dict]:
    """Every rule of a rules file, groups flattened."""
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def floor_case(tkb90: float, fires: bool) -> dict:
    """A promtool test: TKB90 steady at ``tkb90`` for two hours, below the floor alert or not."""
    rule = next(rule for rule in alert_rules() if rule.get("alert") == "LendingTKB90BelowFloor")
    annotations = {
        "summary": f"TKB90 is {tkb90:.2f}%, below the floor",
        "description": rule["annotations"]["description"],  # no template in it
    }
    labels = {"severity": "critical", "job": "lending-grpc"}
    expected = [{"exp_labels": labels, "exp_annotations": annotations}] if fires else []
    return {
        "name": f"TKB90 at {tkb90}",
        "interval": "1m",
        "input_series": [
            {
                "series": 'lending_tkb90_percent{job="lending-grpc",instance="a:9090"}',
                "values": f"{tkb90}+0x120",
            }
        ],
        "alert_rule_test": [
            {"eval_time": "100m", "alertname": "LendingTKB90BelowFloor", "exp_alerts": expected}
        ],
    }


def run_floor_cases(promtool: str, rules_dir: Path, cases: list[dict]) -> subprocess.CompletedProcess:
    spec = {"rule_files": [p.name for p in RULE_FILES], "evaluation_interval": "1m", "tests": cases}
    test_file = rules_dir / "floor.test.yml"
    test_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return run_tool([promtool, "test", "rules", test_file.name], cwd=rules_dir)


# -- command line tools the deployment tests drive (promtool, kubectl, hadolint) -----------------

BIN = Path(sys.executable).parent


def require_tool(name: str, how_to_get_it: str) -> str:
    """The path of ``name`` (the virtualenv first, then PATH), or skip / fail saying ``how_to_get_it``."""
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing: {how_to_get_it}", pytrace=False)
        pytest.skip(f"{name} is not installed ({how_to_get_it})")
    return path


def hold_payment_lock(database_url: str) -> Callable[[], object]:
    """Hold what a payment on loan 'held' needs (the SQLite write lock, or the loan's row lock).

    Returns the release.
    """
    path = sqlite_path(database_url)
    if path is not None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return lambda: (conn.execute("ROLLBACK"), conn.close())
    import psycopg

    conn = psycopg.connect(database_url)
    conn.execute("SELECT id FROM loan WHERE loan_id = 'held' FOR UPDATE")
    return lambda: (conn.rollback(), conn.close())


class PayingThreads:
    """Client threads, one per loan ``loan-<n>``, each running ``_run(n)`` until `stop`.

    A subclass writes ``_run`` (checking ``self._stop``) and keeps what its
    threads see under ``self._lock``; `start` returns the load, started.
    """

    join_s = 30.0

    def __init__(self, target: str, metadata, threads: int) -> None:
        self.target = target
        self.metadata = metadata
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_s)

    def _run(self, n: int) -> None:
        raise NotImplementedError
