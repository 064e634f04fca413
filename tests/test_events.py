"""The loan event log over real gRPC on both backends: what is written, who sees it, order, streams.

DESIGN.md section 6. Every change writes its events in its own transaction;
consumers resume after the last sequence they processed and receive every
later event exactly once, in order.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid

import grpc
import pytest
from helpers import ServerProcess, running_api, today
from lending.v1 import auth_pb2, billing_pb2, events_pb2, events_pb2_grpc

from lending_grpc.core import daily_close
from lending_grpc.core.admin import AccountAdmin
from lending_grpc.core.clock import Clock
from lending_grpc.core.storage.database import sqlite_path
from lending_grpc.core.views import Actor

PASSWORD = "correct horse battery"
T = events_pb2.EventType


def _register(api, prefix: str):
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    user = api.auth.Register(
        auth_pb2.RegisterRequest(username=name, password=PASSWORD, email=f"{name}@x.com")
    )
    tokens = api.auth.Login(auth_pb2.LoginRequest(username=name, password=PASSWORD))
    return name, user.user_id, (("authorization", f"Bearer {tokens.access_token}"),)


@pytest.fixture
def people(api):
    """Two borrowers and an operator: (name, public id, metadata) each."""
    ada, bob, olga = _register(api, "ada"), _register(api, "bob"), _register(api, "olga")
    AccountAdmin(api.server.database, Clock()).set_role(
        Actor(name="cli:test"), olga[0], "operator", granted=True
    )
    return ada, bob, olga


def events_stub(api) -> events_pb2_grpc.EventServiceStub:
    return events_pb2_grpc.EventServiceStub(api.channel)


def list_all(stub, md, after=0, loan_id="", page_size=3) -> list[events_pb2.Event]:
    """Every visible event after ``after``, page by page as a consumer resumes."""
    events: list[events_pb2.Event] = []
    while True:
        page = stub.ListEvents(
            events_pb2.ListEventsRequest(after_sequence=after, page_size=page_size, loan_id=loan_id),
            metadata=md,
        ).events
        if not page:
            return events
        events += page
        after = page[-1].sequence


def kinds(events) -> list[tuple]:
    return [(T.Name(e.type).removeprefix("EVENT_TYPE_"), e.loan_id, e.effective_date) for e in events]


def days_ago(n: int) -> str:
    return (today() - dt.timedelta(days=n)).isoformat()


def create(api, md, loan_id, start, principal="100", term_weeks=2):
    return api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(
            loan_id=loan_id, principal_amount=principal, start_date=start, term_weeks=term_weeks
        ),
        metadata=md,
    )


def pay(api, md, loan_id, amount, **kwargs):
    return api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, **kwargs), metadata=md
    )


# -- what is written ------------------------------------------------------------------


def test_every_change_writes_its_events_with_the_resource_as_it_was(api, people):
    (_, ada_id, ada), _bob, (_, _, olga) = people
    stub = events_stub(api)
    # 100.00 at 0.10 over 2 weeks: installments of 55.00; started 20 days ago, both due and missed.
    create(api, ada, "L1", days_ago(20))
    first = pay(api, ada, "L1", "55.00")
    payoff = pay(api, ada, "L1", "55.00")
    api.billing.ReversePayment(
        billing_pb2.ReversePaymentRequest(payment_id=payoff.payment_id, reason="bounced"), metadata=olga
    )
    events = list_all(stub, ada)
    assert kinds(events) == [
        ("LOAN_CREATED", "L1", days_ago(20)),
        # A back-dated start: delinquent from the outset, effective since the day after the second
        # installment fell due (day -6), as the daily close would have said then.
        ("DELINQUENCY_STARTED", "L1", days_ago(5)),
        ("PAYMENT_ACCEPTED", "L1", days_ago(0)),
        ("DELINQUENCY_ENDED", "L1", days_ago(0)),  # one missed installment is not delinquent
        ("PAYMENT_ACCEPTED", "L1", days_ago(0)),
        ("LOAN_PAID_OFF", "L1", days_ago(0)),
        ("PAYMENT_REVERSED", "L1", days_ago(0)),
        ("LOAN_REOPENED", "L1", days_ago(0)),
    ]
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert all(e.owner == ada_id and e.HasField("occur_time") for e in events)
    created, started, accepted, ended, _, paid_off, reversed_, reopened = events
    assert created.WhichOneof("resource") == "loan" and created.loan.total_amount == "110.00"
    assert (started.delinquency.missed_payments, started.delinquency.overdue_amount) == (2, "110.00")
    assert accepted.payment.payment_id == first.payment_id and accepted.payment.outstanding_balance == "55.00"
    assert ended.delinquency.is_delinquent is False and ended.delinquency.missed_payments == 1
    assert paid_off.loan.state == billing_pb2.LOAN_STATE_PAID_OFF
    assert reversed_.payment.reversed and reversed_.payment.reversal_reason == "bounced"
    assert (
        reopened.loan.state == billing_pb2.LOAN_STATE_ACTIVE and reopened.loan.outstanding_balance == "55.00"
    )
    # A retry writes nothing.
    pay(api, ada, "L1", "55.00", request_id="once")
    pay(api, ada, "L1", "55.00", request_id="once")
    assert len(list_all(stub, ada, after=events[-1].sequence)) == 2  # accepted, paid off



def test_delinquency_events_are_dated_the_day_the_standing_changed_by_value_dates(api, people):
    """A start is dated the first delinquent day, a cure the value date of the curing payment.

    5,000,000.00 from 30 days ago: 110,000.00 due on days -23, -16, -9 and -2; delinquent from
    day -15, the day after the second fell due.
    """
    (_, ada_id, ada), _bob, (_, _, olga) = people
    stub = events_stub(api)
    create(api, ada, "L1", days_ago(30), principal="5000000", term_weeks=50)
    collected = pay(api, olga, "L1", "440000.00", owner=ada_id, value_date=days_ago(3))
    api.billing.ReversePayment(
        billing_pb2.ReversePaymentRequest(payment_id=collected.payment_id, reason="bounced"), metadata=olga
    )
    # Collected before the loan ever became delinquent, but the start was announced from day -15:
    # the end is not dated before the start it ends.
    pay(api, olga, "L1", "440000.00", owner=ada_id, value_date=days_ago(20), request_id="early")
    assert kinds(list_all(stub, ada)) == [
        ("LOAN_CREATED", "L1", days_ago(30)),
        ("DELINQUENCY_STARTED", "L1", days_ago(15)),
        ("PAYMENT_ACCEPTED", "L1", days_ago(3)),
        ("DELINQUENCY_ENDED", "L1", days_ago(3)),
        ("PAYMENT_REVERSED", "L1", days_ago(3)),
        ("DELINQUENCY_STARTED", "L1", days_ago(15)),  # the open period, by value dates, began then
        ("PAYMENT_ACCEPTED", "L1", days_ago(20)),
        ("DELINQUENCY_ENDED", "L1", days_ago(15)),
    ]

def test_owners_see_their_own_loans_events_and_operators_everyones(api, people):
    (_, ada_id, ada), (_, bob_id, bob), (_, _, olga) = people
    stub = events_stub(api)
    create(api, ada, "SAME", days_ago(0))
    create(api, bob, "SAME", days_ago(0))
    create(api, bob, "OTHER", days_ago(0))
    assert [(e.owner, e.loan_id) for e in list_all(stub, ada)] == [(ada_id, "SAME")]
    assert [(e.owner, e.loan_id) for e in list_all(stub, bob)] == [(bob_id, "SAME"), (bob_id, "OTHER")]
    everyone = list_all(stub, olga)
    assert [(e.owner, e.loan_id) for e in everyone] == [(ada_id, "SAME"), (bob_id, "SAME"), (bob_id, "OTHER")]
    assert [e.owner for e in list_all(stub, olga, loan_id="SAME")] == [ada_id, bob_id]
    assert [e.loan_id for e in list_all(stub, bob, loan_id="OTHER")] == ["OTHER"]
    assert list_all(stub, ada, loan_id="OTHER") == []


@pytest.mark.parametrize(
    "request_fields,field",
    [
        ({"after_sequence": -1}, "after_sequence"),
        ({"page_size": -1}, "page_size"),
        ({"loan_id": "bad id!"}, "loan_id"),
    ],
)
def test_bad_list_requests_name_the_field(api, people, request_fields, field):
    (_, _, ada), _bob, _olga = people
    with pytest.raises(grpc.RpcError) as info:
        events_stub(api).ListEvents(events_pb2.ListEventsRequest(**request_fields), metadata=ada)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        next(
            iter(events_stub(api).WatchEvents(events_pb2.WatchEventsRequest(after_sequence=-5), metadata=ada))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_event_service_needs_a_token(api):
    stub = events_stub(api)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListEvents(events_pb2.ListEventsRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        next(iter(stub.WatchEvents(events_pb2.WatchEventsRequest(), timeout=5)))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- the daily close -------------------------------------------------------------------


def test_the_daily_close_announces_delinquency_that_began_because_days_passed(api, people):
    (_, _, ada), _bob, _olga = people
    db = api.server.database
    # Started 8 days ago: installment 1 due yesterday, 2 in six days; delinquent in seven.
    create(api, ada, "L1", days_ago(8))
    create(api, ada, "L2", days_ago(0))  # due in 7 and 14 days: delinquent in 15
    clock = Clock()
    in_a_week = today() + dt.timedelta(days=7)
    with db.unit_of_work():
        closed = daily_close.close_day(db, clock, in_a_week)
        again = daily_close.close_day(db, clock, in_a_week)
    assert (closed.delinquencies_started, again.already_closed) == (1, True)
    events = list_all(events_stub(api), ada)
    assert kinds(events)[-1] == ("DELINQUENCY_STARTED", "L1", in_a_week.isoformat())
    assert (
        events[-1].delinquency.missed_payments == 2 and events[-1].delinquency.as_of == in_a_week.isoformat()
    )


def test_a_payment_after_an_unannounced_delinquency_says_it_began_then_ended(api, people):
    (_, _, ada), _bob, _olga = people
    db = api.server.database
    # Due 13 and 6 days ago: delinquent since 5 days ago.
    create(api, ada, "L1", days_ago(20), principal="1000", term_weeks=10)
    # As if the loan had turned delinquent by the passing of days and no close had said so yet.
    from lending_grpc.core.storage.models import Loan

    with db.unit_of_work():
        Loan.update(announced_delinquent_since=None).where(Loan.loan_id == "L1").execute()
    pay(api, ada, "L1", "220.00")
    assert kinds(list_all(events_stub(api), ada))[-3:] == [
        ("DELINQUENCY_STARTED", "L1", days_ago(5)),
        ("PAYMENT_ACCEPTED", "L1", days_ago(0)),
        ("DELINQUENCY_ENDED", "L1", days_ago(0)),
    ]


# -- order and exactly once -------------------------------------------------------------


def test_a_transaction_that_commits_late_is_never_skipped(api, people, database_url):
    """PostgreSQL: an event whose transaction took a lower id commits after higher ones were read."""
    if sqlite_path(database_url) is not None:
        pytest.skip("SQLite has one writer: a transaction cannot hold an event id while others commit")
    import psycopg

    (_, ada_id, ada), _bob, _olga = people
    stub = events_stub(api)
    create(api, ada, "L0", days_ago(0), principal="5000000", term_weeks=50)
    create(api, ada, "L1", days_ago(0), principal="5000000", term_weeks=50)
    seen = list_all(stub, ada)
    # The held event is on another loan: its foreign key locks that loan's row against updates.
    loan_pk, owner_pk = (
        psycopg.connect(database_url).execute("SELECT id, owner_id FROM loan WHERE loan_id = 'L0'").fetchone()
    )
    held = psycopg.connect(database_url)
    # What a slow payment transaction does: take an event id now, commit later.
    held.execute(
        "INSERT INTO event (type, loan_row_id, loan_id, owner_id, owner_user_id, occur_time_us,"
        " effective_date, payload) VALUES ('LOAN_REOPENED', %s, 'L0', %s, %s, 0, CURRENT_DATE, %s)",
        (loan_pk, owner_pk, ada_id, '{"kind":"loan","loan_id":"L0","terms":{"principal_cents":1,"rate_e4":0,'
         '"term_weeks":1,"start_date":"2026-01-05","total_cents":1,"weekly_cents":1,"final_cents":1},'
         '"paid_weeks":0,"paid_cents":0,"create_time_us":0}'),
    )  # fmt: skip
    held_id = held.execute("SELECT MAX(id) FROM event").fetchone()[0]
    for n in range(3):
        pay(api, ada, "L1", "110000.00", request_id=f"after-{n}")
    seen += list_all(stub, ada, after=seen[-1].sequence)
    assert kinds(seen)[-3:] == [("PAYMENT_ACCEPTED", "L1", days_ago(0))] * 3
    held.commit()
    held.close()
    time.sleep(0.5)  # numbered by the hub within its poll interval
    late = list_all(stub, ada, after=seen[-1].sequence)
    assert len(late) == 1 and late[0].sequence > seen[-1].sequence
    ids = (
        psycopg.connect(database_url)
        .execute("SELECT id FROM event WHERE sequence IS NOT NULL ORDER BY sequence")
        .fetchall()
    )
    assert ids[-1][0] == held_id  # numbered last although its id is older
    everything = list_all(stub, ada)
    assert [e.sequence for e in everything] == [e.sequence for e in seen + late]


@pytest.mark.slow
def test_writers_on_several_processes_and_a_consumer_racing_them(tmp_path, database_url):
    """Every event exactly once and in order, read by a consumer as fast as it can while others write."""
    database = database_url if sqlite_path(database_url) is None else sqlite_path(database_url)
    unlimited = {"LENDING_RATE_LIMIT_USER_PER_SECOND": "0", "LENDING_RATE_LIMIT_PEER_PER_SECOND": "0"}
    servers = [
        ServerProcess(database, "--workers", "2", env=unlimited),
        ServerProcess(database, env=unlimited),
    ]
    try:
        channels = [grpc.insecure_channel(server.target) for server in servers]
        from lending.v1 import auth_pb2_grpc, billing_pb2_grpc

        auth = auth_pb2_grpc.AuthServiceStub(channels[0])
        auth.Register(auth_pb2.RegisterRequest(username="racer", password=PASSWORD, email="r@x.com"))
        token = auth.Login(auth_pb2.LoginRequest(username="racer", password=PASSWORD)).access_token
        md = (("authorization", f"Bearer {token}"),)
        billing = [billing_pb2_grpc.BillingServiceStub(channel) for channel in channels]
        loans = 8
        for n in range(loans):
            billing[n % 2].CreateLoan(
                billing_pb2.CreateLoanRequest(
                    loan_id=f"R{n}", principal_amount="5000000", start_date=today().isoformat()
                ),
                metadata=md,
            )
        consumed: list[int] = []
        failures: list[BaseException] = []
        done = threading.Event()

        def consume() -> None:
            try:
                read_as_fast_as_possible()
            except BaseException as exc:
                failures.append(exc)

        def read_as_fast_as_possible() -> None:
            stub = events_pb2_grpc.EventServiceStub(channels[1])
            after = 0
            while True:
                finished = done.is_set()
                page = stub.ListEvents(
                    events_pb2.ListEventsRequest(after_sequence=after, page_size=7), metadata=md, timeout=30
                ).events
                consumed.extend(e.sequence for e in page)
                if page:
                    after = page[-1].sequence
                elif finished:
                    return

        def write(n: int) -> None:
            for k in range(6):
                billing[(n + k) % 2].MakePayment(
                    billing_pb2.MakePaymentRequest(
                        loan_id=f"R{n}", amount="110000.00", request_id=f"w{n}-{k}"
                    ),
                    metadata=md,
                    timeout=60,
                )

        consumer = threading.Thread(target=consume)
        consumer.start()
        writers = [threading.Thread(target=write, args=(n,)) for n in range(loans)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        time.sleep(0.5)  # the last events are numbered
        done.set()
        consumer.join(60)
        assert not failures and not consumer.is_alive(), failures
        log = list_all(events_pb2_grpc.EventServiceStub(channels[0]), md, page_size=500)
        assert len(log) == loans * (1 + 6)
        assert consumed == [e.sequence for e in log]
        assert consumed == sorted(set(consumed))
    finally:
        for server in servers:
            server.terminate()


# -- streams ------------------------------------------------------------------------------


class Watcher:
    """Collects a WatchEvents stream on a thread of its own."""

    def __init__(self, stub, md, after=0, timeout=None) -> None:
        self.events: list[tuple[events_pb2.Event, float]] = []
        self.error: grpc.RpcError | None = None
        self.call = stub.WatchEvents(
            events_pb2.WatchEventsRequest(after_sequence=after), metadata=md, timeout=timeout
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.call:
                self.events.append((event, time.perf_counter()))
        except grpc.RpcError as err:
            self.error = err

    def wait_for(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.events) >= count, (len(self.events), self.error)


def test_watch_sends_the_backlog_then_each_new_event_within_a_second(api, people):
    (_, _, ada), _bob, _olga = people
    create(api, ada, "L1", days_ago(0), principal="5000000", term_weeks=50)
    watcher = Watcher(events_stub(api), ada)
    watcher.wait_for(1)
    delays = []
    for n in range(10):
        sent = time.perf_counter()
        pay(api, ada, "L1", "110000.00")
        watcher.wait_for(2 + n)
        delays.append(watcher.events[-1][1] - sent)
    watcher.call.cancel()
    watcher.thread.join(5)
    sequences = [e.sequence for e, _ in watcher.events]
    assert sequences == sorted(set(sequences)) and len(sequences) == 11
    assert max(delays) < 1.0, delays


def test_a_stream_ends_unavailable_on_shutdown_and_resumes_on_the_next_server(tmp_path, database_url):
    with running_api(tmp_path, database_url) as api:
        _, _, md = _register(api, "ada")
        create(api, md, "L1", days_ago(0))
        watcher = Watcher(events_stub(api), md)
        watcher.wait_for(1)
        api.server.stop(2)
        watcher.thread.join(10)
    assert watcher.error is not None and watcher.error.code() == grpc.StatusCode.UNAVAILABLE
    assert "after_sequence=" in watcher.error.details()
    with running_api(tmp_path, database_url) as api:
        pay(api, md, "L1", "55.00")
        resumed = Watcher(events_stub(api), md, after=watcher.events[-1][0].sequence)
        resumed.wait_for(1)
        resumed.call.cancel()
        assert [T.Name(e.type) for e, _ in resumed.events] == ["EVENT_TYPE_PAYMENT_ACCEPTED"]


@pytest.mark.settings(access_token_ttl_seconds=2)
def test_a_stream_ends_unauthenticated_when_its_token_expires(api, people):
    (_, _, ada), _bob, _olga = people
    started = time.monotonic()
    watcher = Watcher(events_stub(api), ada)
    watcher.thread.join(10)
    assert watcher.error is not None and watcher.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in watcher.error.details()
    assert time.monotonic() - started < 4


@pytest.mark.settings(max_workers=2)
def test_deadlines_and_cancellation_free_the_server_threads(api, people):
    (_, _, ada), _bob, _olga = people
    stub = events_stub(api)
    started = time.monotonic()
    watchers = [Watcher(stub, ada, timeout=1.0) for _ in range(2)]
    for watcher in watchers:
        watcher.thread.join(10)
        assert watcher.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    cancelled = [Watcher(stub, ada) for _ in range(2)]
    time.sleep(0.3)
    for watcher in cancelled:
        watcher.call.cancel()
    time.sleep(1.0)  # each notices within its idle check
    # Both threads are free again: a unary call is served.
    create(api, ada, "L1", days_ago(0))
    assert [T.Name(e.type) for e in list_all(stub, ada)] == ["EVENT_TYPE_LOAN_CREATED"]


def test_an_idle_stream_costs_no_query_per_watcher(api, people):
    (_, _, ada), _bob, _olga = people
    stub = events_stub(api)

    class Counter(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.count = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.count += 1

    def statements_while(watchers: int) -> int:
        active = [Watcher(stub, ada) for _ in range(watchers)]
        time.sleep(0.5)  # backlogs read
        logger, counter = logging.getLogger("peewee"), Counter()
        level = logger.level
        logger.addHandler(counter)
        logger.setLevel(logging.DEBUG)
        try:
            time.sleep(2.0)
        finally:
            logger.removeHandler(counter)
            logger.setLevel(level)
            for watcher in active:
                watcher.call.cancel()
        return counter.count

    one, eight = statements_while(1), statements_while(8)
    # The hub polls the log for the whole process; watchers only wait. A query per watcher per
    # poll would add 7 x ~10 polls; one poll more or less in the window (3-4 statements on
    # PostgreSQL, a slow machine's timing) is not that.
    assert eight <= one + 12, (one, eight)


@pytest.mark.slow
def test_a_watcher_hears_of_commits_made_by_another_process(tmp_path, database_url):
    database = database_url if sqlite_path(database_url) is None else sqlite_path(database_url)
    watched, writer = ServerProcess(database), ServerProcess(database)
    try:
        from lending.v1 import auth_pb2_grpc, billing_pb2_grpc

        with grpc.insecure_channel(watched.target) as one, grpc.insecure_channel(writer.target) as two:
            auth = auth_pb2_grpc.AuthServiceStub(two)
            auth.Register(auth_pb2.RegisterRequest(username="ada", password=PASSWORD, email="a@x.com"))
            token = auth.Login(auth_pb2.LoginRequest(username="ada", password=PASSWORD)).access_token
            md = (("authorization", f"Bearer {token}"),)
            billing = billing_pb2_grpc.BillingServiceStub(two)
            billing.CreateLoan(
                billing_pb2.CreateLoanRequest(
                    loan_id="L1", principal_amount="5000000", start_date=today().isoformat()
                ),
                metadata=md,
            )
            watcher = Watcher(events_pb2_grpc.EventServiceStub(one), md)
            watcher.wait_for(1)
            delays = []
            for n in range(10):
                sent = time.perf_counter()
                billing.MakePayment(
                    billing_pb2.MakePaymentRequest(loan_id="L1", amount="110000.00"), metadata=md
                )
                watcher.wait_for(2 + n)
                delays.append(watcher.events[-1][1] - sent)
            watcher.call.cancel()
            assert max(delays) < 1.0, delays
    finally:
        watched.terminate()
        writer.terminate()


def test_the_stream_is_logged_and_counted_like_any_call(api, people, caplog):
    (_, _, ada), _bob, _olga = people
    with caplog.at_level(logging.INFO, logger="lending_grpc.access"):
        watcher = Watcher(events_stub(api), ada)
        time.sleep(0.3)
        watcher.call.cancel()
        watcher.thread.join(5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any(
            "WatchEvents" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "WatchEvents" in r.getMessage()]
    assert lines and "code=CANCELLED" in lines[0], lines
