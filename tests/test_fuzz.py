"""Hostile input against one real server: random and mutated bytes, hypothesis-made field values.

For every call: the answer is never UNKNOWN or INTERNAL, its message holds
no traceback, SQL or driver text that the request did not itself contain,
and a refused call leaves every stored row as it was (all tables are
compared before and after). At the end the server still answers SERVING
and serves ordinary calls with exact figures.
"""

from __future__ import annotations

import collections
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from databases import BACKENDS, sqlite_url
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import symbol_database
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import CLI_ACTOR, PASSWORD, make_settings, today
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lending.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
)

from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.clock import Clock
from lending_grpc.core.storage.database import sqlite_path
from lending_grpc.server import create_server

SERVICES = [
    service
    for file in (auth_pb2.DESCRIPTOR, billing_pb2.DESCRIPTOR, audit_pb2.DESCRIPTOR, events_pb2.DESCRIPTOR)
    for service in file.services_by_name.values()
]
METHODS = [method for service in SERVICES for method in service.methods]
# A server stream (WatchEvents) answers a valid request by staying open: the client ends it with a
# short deadline, and a stream still open at that deadline counts as answered.
STREAM_SECONDS = 0.25
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# Text that must never reach a client unless the client sent it: tracebacks,
# driver and ORM names, SQL, Python internals.
LEAK_MARKERS = (
    "Traceback",
    'File "',
    "sqlite",
    "peewee",
    "psycopg",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    "DELETE ",
    "CONSTRAINT",
    "constraint failed",
    "OperationalError",
    "IntegrityError",
    "Exception",
    "<object",
    "0x7f",
)
REFUSAL_ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,  # roles: an authenticated caller without the right
}
# Tables that record refused requests on purpose are left out of the "refused calls change
# nothing" comparison: the audit trail (refusals are audited), failed sign-in counters, and
# refresh-token families (a replayed refresh token revokes its family). Keep this list to exactly
# such tables: the business tables (users, loans, payments) must stay compared.
DELIBERATE_WRITES = frozenset({"audit_event", "login_throttle", "token_family"})

SQL_AND_FORMAT = [
    "' OR '1'='1",
    "'; DROP TABLE loan; --",
    '" OR ""="',
    "1; DELETE FROM payment",
    "L-1' --",
    "UNION SELECT password_hash FROM user",
    "%s%s%s%s%n",
    "%(secret_key)s",
    "{0.__class__.__mro__}",
    "{secret}",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "\x00",
    "\r\n\r\nHTTP/1.1 200 OK",
    "\u202e\u200b\ufeff",
    "𝟘𝟙𝟚",
    "Ω≈ç√∫",
    "NaN",
    "Infinity",
    "-0",
    "1e308",
    "1e-400",
    "0x10",
    "1_000",
    "９９",  # full-width digits
    "٣",  # Arabic-Indic digit
    "99999999999999999999999999999999",
    "-99999999999999999999999999999999",
    "1000000000000.01",
    "0.001",
    "0000-00-00",
    "9999-12-31",
    "2026-02-30",
    "-0001-01-01",
    "2026-1-1",
    "20260105",
    "2026-01-05T00:00:00Z",
]


def _plausible_text(field_name: str, state: dict) -> str:
    values = {
        # Sign-ins under attack target mallory, whose account absorbs the lockouts.
        "username": "mallory",
        "password": PASSWORD,
        "email": "mallory@example.com",
        "refresh_token": state["refresh_token"],
        "loan_id": "L-1",
        "principal_amount": "1000",
        "start_date": "2026-01-05",
        "interest_rate": "0.10",
        "amount": "22.00",
        "request_id": "pay-fuzz",
        "as_of": "2026-01-27",
        "page_token": "",
        # Servicing: operators (olga) collect for alice (`owner`), back-date, reverse and report.
        "payment_id": state["payment_id"],
        "reason": "the transfer bounced",
        "owner": state["owner"],
        "value_date": today().isoformat(),
    }
    return values.get(field_name, "x")


# Stand-ins the hypothesis strategy draws (it runs before any server exists), swapped for the
# target's real values in the test: one of the reversible payments, alice's public user id.
PLACEHOLDERS = {"refresh_token": "x", "payment_id": "@payment_id", "owner": "@owner"}


def _plausible_int(field_name: str) -> int:
    return 0 if field_name == "after_sequence" else 10


def _request_class(method: pb_descriptor.MethodDescriptor):
    return symbol_database.Default().GetSymbol(method.input_type.full_name)


def _plausible(method: pb_descriptor.MethodDescriptor, state: dict):
    message = _request_class(method)()
    for field in method.input_type.fields:
        if field.type == field.TYPE_STRING:
            setattr(message, field.name, _plausible_text(field.name, state))
        elif field.type in (field.TYPE_INT32, field.TYPE_INT64):
            setattr(message, field.name, _plausible_int(field.name))
        elif field.type == field.TYPE_BOOL:
            setattr(message, field.name, True)
    return message


class Ledger:
    """Every stored row, read through a separate connection, to prove refused calls change nothing."""

    def __init__(self, database_url: str) -> None:
        path = sqlite_path(database_url)
        if path is not None:
            self._db = sqlite3.connect(path)
            listing = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            import psycopg

            self._db = psycopg.connect(database_url, autocommit=True)
            listing = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        self._tables = sorted(
            name for (name,) in self._db.execute(listing).fetchall() if name not in DELIBERATE_WRITES
        )
        assert {"user", "loan", "payment", "event"} <= set(self._tables)
        self.rows = self.settled()

    def read(self) -> dict[str, list[tuple]]:
        return {
            table: self._db.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()
            for table in self._tables
        }

    def settled(self, timeout: float = 10.0) -> dict[str, list[tuple]]:
        """Every row once the events of the writes so far have their sequence numbers.

        On PostgreSQL an event commits without a sequence; the server numbers it shortly after,
        in commit order (DESIGN.md section 6), whatever the next call is. A snapshot taken before
        that would blame the next refused call for the numbering, so wait for it. A refused call
        that itself wrote an event would still show up: as a new row.
        """
        deadline = time.monotonic() + timeout
        while self._db.execute('SELECT count(*) FROM "event" WHERE sequence IS NULL').fetchone()[0]:
            assert time.monotonic() < deadline, "events left without a sequence number"
            time.sleep(0.02)
        return self.read()

    def assert_whole(self, what) -> None:
        """Nothing half-applied: balances, payments, reversals and their events all agree."""
        paid = dict(self._db.execute("SELECT id, paid_cents FROM loan").fetchall())
        counting = dict(
            self._db.execute(
                "SELECT loan_id, sum(amount_cents) FROM payment"
                " WHERE reverse_time_us IS NULL GROUP BY loan_id"
            ).fetchall()
        )
        assert {loan: cents for loan, cents in paid.items() if cents} == counting, what
        facts = {
            "LOAN_CREATED": "SELECT count(*) FROM loan",
            "PAYMENT_ACCEPTED": "SELECT count(*) FROM payment",
            "PAYMENT_REVERSED": "SELECT count(*) FROM payment WHERE reverse_time_us IS NOT NULL",
        }
        for event, query in facts.items():
            written = self._db.execute(f"SELECT count(*) FROM \"event\" WHERE type = '{event}'")
            assert written.fetchone()[0] == self._db.execute(query).fetchone()[0], (what, event)

    def close(self) -> None:
        self._db.close()


STREAMING = {
    f"/{method.containing_service.full_name}/{method.name}" for method in METHODS if method.server_streaming
}


def drain(stream) -> tuple[grpc.StatusCode, str]:
    """Read a server stream to its end; one still open at the client's deadline was answered."""
    try:
        for _ in stream:
            pass
    except grpc.RpcError as err:
        if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK, ""
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


class Target:
    """The server under attack, its users and a record of every answer."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        # Floods are the point here: the rate limits (tested on their own) would only answer them.
        self.running = create_server(
            make_settings(
                tmp_path,
                database_url=database_url,
                rate_limit_user_per_second=0,
                rate_limit_peer_per_second=0,
            )
        )
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.running.port}", options=[("grpc.max_send_message_length", -1)]
        )
        try:
            self._prepare(database_url)
        except BaseException:
            self.close()
            raise

    def _prepare(self, database_url: str) -> None:
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.billing = billing_pb2_grpc.BillingServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.events = events_pb2_grpc.EventServiceStub(self.channel)
        self.state: dict = {}
        self.user_ids: dict[str, str] = {}
        self.metadata = {"alice": self._user("alice"), "bob": self._user("bob")}
        self._user("mallory")
        # olga is an operator: the servicing RPCs (collections for alice, reversals, the whole book)
        # are reached with her rights, and refused without them.
        AccountAdmin(self.running.database, Clock()).set_role(
            CLI_ACTOR, self._register("olga"), "operator", granted=True
        )
        self.metadata["olga"] = self._login("olga")
        # The refresh token under attack is carol's, so replays revoking it leave alice's session alone.
        self._user("carol")
        self.metadata["none"] = ()
        self.metadata["forged"] = (("authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."),)
        alice = self.metadata["alice"]
        self.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(
                loan_id="L-1", principal_amount="1000", start_date="2026-01-05", term_weeks=50
            ),
            metadata=alice,
        )
        self.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(
                loan_id="L-2", principal_amount="2000000", start_date=today().isoformat()
            ),
            metadata=alice,
        )
        self.billing.MakePayment(
            billing_pb2.MakePaymentRequest(loan_id="L-2", amount="44000.00", request_id="pay-1"),
            metadata=alice,
        )
        # L-3 (1,000,001.00: 49 installments of 22,000.02, a final one of 22,000.12), started 60 days
        # ago, with payments to reverse: three single installments collected on past days and the
        # payoff today. Reversing an early one leaves an unapplied amount; reversing the payoff reopens.
        self.state["owner"] = self.user_ids["alice"]
        start = today() - timedelta(days=60)
        self.billing.CreateLoan(
            billing_pb2.CreateLoanRequest(
                loan_id="L-3", principal_amount="1000001", start_date=start.isoformat()
            ),
            metadata=alice,
        )
        olga = self.metadata["olga"]
        amounts = [
            "22000.02",
            "22000.02",
            "22000.02",
            "1034001.04",
        ]  # 1,100,001.10 - 3 x 22,000.02 (66,000.06)
        self.state["payment_ids"] = [
            self.billing.MakePayment(
                billing_pb2.MakePaymentRequest(
                    loan_id="L-3",
                    amount=amount,
                    owner=self.state["owner"],
                    value_date=min(start + timedelta(days=7 * n), today()).isoformat(),
                ),
                metadata=olga,
            ).payment_id
            for n, amount in enumerate(amounts, start=1)
        ]
        self.state["payment_id"] = self.state["payment_ids"][0]
        self.ledger = Ledger(database_url)
        self.ledger.assert_whole("prepared")
        self.codes: collections.Counter = collections.Counter()
        self.answered: collections.Counter = collections.Counter()  # OK answers by method path

    def _register(self, name: str) -> str:
        user = self.auth.Register(
            auth_pb2.RegisterRequest(username=name, password=PASSWORD, email=f"{name}@example.com")
        )
        self.user_ids[name] = user.user_id
        return name

    def _user(self, name: str):
        return self._login(self._register(name))

    def _login(self, name: str):
        tokens = self.auth.Login(auth_pb2.LoginRequest(username=name, password=PASSWORD))
        self.state["refresh_token"] = tokens.refresh_token
        return (("authorization", f"Bearer {tokens.access_token}"),)

    def after(self, path: str, who: str, code: grpc.StatusCode) -> None:
        """A fuzzed Logout that succeeded ended that user's session: sign in again."""
        if code is grpc.StatusCode.OK and path.endswith("/Logout") and who in ("alice", "bob", "olga"):
            refresh = self.state["refresh_token"]
            self.metadata[who] = self._login(who)
            self.state["refresh_token"] = refresh  # still carol's
            self.ledger.rows = self.ledger.settled()

    def raw(self, method: str, payload: bytes, metadata) -> tuple[grpc.StatusCode, str]:
        if method in STREAMING:
            stream = self.channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            return drain(stream(payload, metadata=metadata, timeout=STREAM_SECONDS))
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(payload, metadata=metadata, timeout=30)
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    def check(self, what, code: grpc.StatusCode, details: str, inputs: tuple[str, ...] = ()) -> None:
        """The invariants every answer must keep."""
        self.codes[code.name] += 1
        if code is grpc.StatusCode.OK and isinstance(what, tuple):
            self.answered[what[0]] += 1
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (what, code, details)
        assert code is grpc.StatusCode.OK or code in REFUSAL_ALLOWED, (what, code, details)
        assert len(details) <= 1024, (what, len(details))
        for marker in LEAK_MARKERS:
            if marker.lower() in details.lower():
                assert any(marker.lower() in text.lower() for text in inputs), (what, marker, details)
        if code is grpc.StatusCode.OK:
            self.ledger.rows = self.ledger.settled()
            self.ledger.assert_whole(what)
        else:
            assert self.ledger.read() == self.ledger.rows, (what, code, details)

    def close(self) -> None:
        if hasattr(self, "ledger"):
            self.ledger.close()
        self.channel.close()
        self.running.stop(0)


@pytest.fixture(scope="module", params=BACKENDS)
def target(request, tmp_path_factory) -> Iterator[Target]:
    """One server per backend for the whole module: the attacks accumulate on the same data."""
    tmp_path = tmp_path_factory.mktemp("fuzz")
    if request.param != "sqlite":
        request.getfixturevalue("postgres")  # before our server opens a database (one per process)
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        databases = request.getfixturevalue("postgres")
        url = databases.create()
        request.addfinalizer(lambda: databases.drop(url))
    target = Target(tmp_path, url)
    yield target
    target.close()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One of the classic byte mutations of a valid encoding."""
    data = bytearray(data)
    kind = rng.randrange(9)
    if kind == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1 and data:  # truncate
        del data[rng.randrange(len(data)) :]
    elif kind == 2:  # insert random bytes
        at = rng.randint(0, len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 3:  # a length prefix claiming far more than follows
        data[0:0] = bytes([0x0A]) + rng.choice(
            [b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x01", b"\x7f"]
        )
    elif kind == 4:  # the same field many times (last one wins for scalars)
        data = data * rng.randint(2, 50)
    elif kind == 5:  # unknown fields with every wire type, including the deprecated groups
        tag = rng.randint(16, 2**29 - 1) << 3 | rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
        varint = bytearray()
        while True:
            byte, tag = tag & 0x7F, tag >> 7
            varint.append(byte | (0x80 if tag else 0))
            if not tag:
                break
        data += varint + rng.randbytes(rng.randint(0, 8))
    elif kind == 6:  # a known field number with the wrong wire type
        data[0:0] = bytes([rng.choice([0x08, 0x0D, 0x11, 0x18, 0x1A, 0x20])]) + rng.randbytes(4)
    elif kind == 7:  # invalid UTF-8 inside a string field
        data += b"\x0a\x04\xff\xfe\xc0\x80"
    else:  # unknown field 15 as 50-200 nested groups: the parser's recursion limit is 100
        depth = rng.randint(50, 200)
        data += b"\x7b" * depth + b"\x7c" * depth
    return bytes(data)


def test_random_and_mutated_bytes_to_every_method(target):
    rng = random.Random(20261126)
    identities = ["alice", "bob", "none", "forged", "olga"]
    sent = 0
    for method in METHODS:
        path = f"/{method.containing_service.full_name}/{method.name}"
        valid = _plausible(method, target.state).SerializeToString()
        # The valid request first, once per identity: each method is also reached the way a client
        # reaches it, by the operator too (collections, reversals, the whole book, everyone's events).
        payloads = [valid] * len(identities)
        payloads += [b"", b"\xff" * 65536, b"\x0a\xff\xff\xff\xff\x0f", b"\x0b" * 1000 + b"\x0c" * 1000]
        payloads += [rng.randbytes(rng.randint(1, 256)) for _ in range(40)]
        payloads += [_mutate(rng, valid) for _ in range(100)]
        for n, payload in enumerate(payloads):
            who = identities[n % len(identities)]
            code, details = target.raw(path, payload, target.metadata[who])
            target.check((path, who, payload[:64]), code, details)
            target.after(path, who, code)
            sent += 1
    for n in range(100):  # the health service gets garbage too
        code, details = target.raw(HEALTH_CHECK, rng.randbytes(rng.randint(0, 64)), ())
        target.check((HEALTH_CHECK, n), code, details)
        sent += 1
    assert sent >= 1800
    assert target.codes["INVALID_ARGUMENT"] > 100 and target.codes["UNAUTHENTICATED"] > 100
    servicing = [
        "/lending.v1.BillingService/MakePayment",
        "/lending.v1.BillingService/ReversePayment",
        "/lending.v1.BillingService/GetDelinquencyHistory",
        "/lending.v1.BillingService/GetPortfolioReport",
        "/lending.v1.EventService/ListEvents",
        "/lending.v1.EventService/WatchEvents",
    ]
    assert all(target.answered[path] for path in servicing), {
        path: target.answered[path] for path in servicing
    }
    # The operator's reversal took: the first of L-3's payments is listed as reversed.
    listed = target.billing.ListPayments(
        billing_pb2.ListPaymentsRequest(loan_id="L-3", owner=target.state["owner"]),
        metadata=target.metadata["olga"],
    ).payments
    assert [p.reversed for p in listed if p.payment_id == target.state["payment_id"]] == [True]


def _hostile_text() -> st.SearchStrategy[str]:
    fragments = st.sampled_from(SQL_AND_FORMAT)
    return st.one_of(
        st.text(max_size=80),
        st.text(st.characters(max_codepoint=0x1F), max_size=40),  # control characters
        st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), max_size=40),
        fragments,
        st.tuples(st.text(max_size=10), fragments, st.text(max_size=10)).map("".join),
        st.tuples(st.sampled_from(["9", "a", "é", "\x00", "L-", "' OR 1=1 "]), st.integers(100, 300_000)).map(
            lambda pair: pair[0] * pair[1]  # huge strings, up to ~0.9 MB of UTF-8
        ),
    )


_INTS = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([0, -1, 1, 49, 50, 51, 520, 521, 2**31 - 1, -(2**31), 10**9]),
)


@st.composite
def hostile_calls(draw):
    method = draw(st.sampled_from(METHODS))
    message = _request_class(method)()
    for field in method.input_type.fields:
        if field.type == field.TYPE_STRING:
            keep = _plausible_text(field.name, PLACEHOLDERS)
            value = draw(st.one_of(_hostile_text(), st.just(keep)))
            setattr(message, field.name, value)
        elif field.type in (field.TYPE_INT32, field.TYPE_INT64):
            setattr(message, field.name, draw(st.one_of(_INTS, st.just(_plausible_int(field.name)))))
        elif field.type == field.TYPE_BOOL:
            setattr(message, field.name, draw(st.booleans()))
    who = draw(st.sampled_from(["alice", "alice", "alice", "bob", "none", "olga", "olga"]))
    return method, message, who, draw(st.integers(0, 3))


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(call=hostile_calls())
def test_hypothesis_field_values_through_the_stubs(target, call):
    method, message, who, pick = call
    path = f"/{method.containing_service.full_name}/{method.name}"
    for field in method.input_type.fields:  # the placeholders become the target's real values
        if field.type == field.TYPE_STRING and getattr(message, field.name) == "@payment_id":
            setattr(message, field.name, target.state["payment_ids"][pick])
        elif field.type == field.TYPE_STRING and getattr(message, field.name) == "@owner":
            setattr(message, field.name, target.state["owner"])
    # The generated stub's own method: the request is serialized exactly as a client's would be.
    stub = {
        "AuthService": target.auth,
        "BillingService": target.billing,
        "AuditService": target.audit,
        "EventService": target.events,
    }[method.containing_service.name]
    stub_call = getattr(stub, method.name)
    if method.server_streaming:
        code, details = drain(stub_call(message, metadata=target.metadata[who], timeout=STREAM_SECONDS))
    else:
        try:
            stub_call(message, metadata=target.metadata[who], timeout=30)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
    inputs = tuple(getattr(message, f.name) for f in method.input_type.fields if f.type == f.TYPE_STRING)
    target.check((path, who, str(message)[:200]), code, details, inputs)
    target.after(path, who, code)


def test_five_megabyte_request_is_resource_exhausted_and_the_server_stays_healthy(target):
    alice = target.metadata["alice"]
    for path in ("/lending.v1.BillingService/CreateLoan", "/lending.v1.AuthService/Login"):
        huge = b"\x0a\x80\x80\x80\x02" + b"a" * (5 * 1024 * 1024)  # field 1, 5 MiB long
        code, details = target.raw(path, huge, alice)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        target.check(path, code, details)
    # Headers beyond the metadata limit (16 KiB soft, 20 KiB hard) are refused without harm either.
    code, details = target.raw("/lending.v1.BillingService/ListLoans", b"", (("x-padding", "p" * 40_000),))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    target.check("huge metadata", code, details)


def test_server_is_healthy_and_exact_after_the_attacks(target):
    health = health_pb2_grpc.HealthStub(target.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    loan = target.billing.GetLoan(
        billing_pb2.GetLoanRequest(loan_id="L-2"), metadata=target.metadata["alice"]
    )
    assert (loan.total_amount, loan.paid_amount, loan.outstanding_balance) == (
        "2200000.00",
        "44000.00",
        "2156000.00",
    )
    # L-2 started today with this week's installment paid: never delinquent, nothing overdue.
    alice = target.metadata["alice"]
    history = target.billing.GetDelinquencyHistory(
        billing_pb2.GetDelinquencyHistoryRequest(loan_id="L-2"), metadata=alice
    )
    assert list(history.periods) == []
    standing = target.billing.GetDelinquencyStatus(
        billing_pb2.GetDelinquencyStatusRequest(loan_id="L-2"), metadata=alice
    )
    assert (standing.missed_payments, standing.overdue_amount, standing.days_past_due) == (0, "0.00", 0)
    # The event log survived: the operator pages through every stored event once, in sequence order.
    events, after = [], 0
    while page := target.events.ListEvents(
        events_pb2.ListEventsRequest(after_sequence=after, page_size=100), metadata=target.metadata["olga"]
    ).events:
        events += page
        after = page[-1].sequence
    sequences = [event.sequence for event in events]
    assert sequences == sorted(set(sequences))
    assert len(events) == len(target.ledger.settled()["event"])
    print("answers by code:", dict(target.codes))
