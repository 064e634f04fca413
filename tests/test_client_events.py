"""The event log through the clients: the SDK's list and watch calls, its resuming after a server
restart or an expired token, and the command line's `events [--after N] [--follow]`.

Real servers throughout (restarted on the same port and database where the
watcher must resume), except where gRPC's own retry behaviour is checked: a
stand-in EventService then fails on cue and counts the streams it is asked for.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from concurrent import futures
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from helpers import PASSWORD, Cli, ServerProcess, grant_operator, make_settings, sign_up, today
from lending.v1 import auth_pb2, auth_pb2_grpc, events_pb2, events_pb2_grpc

from lending_grpc.client import (
    Event,
    EventType,
    EventWatch,
    InvalidArgument,
    LendingClient,
    Loan,
    LoanState,
    Payment,
    PermissionDenied,
    Tokens,
    Unauthenticated,
    Unavailable,
)
from lending_grpc.server import create_server

WAIT_SECONDS = 20


class Collector:
    """Consumes a watch on a thread of its own, as a service following the log would."""

    def __init__(self, watch: EventWatch) -> None:
        self.watch = watch
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            with self._changed:
                self.error = exc
                self._changed.notify_all()

    def wait_for(self, count: int) -> list[Event]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.events) >= count or self.error, WAIT_SECONDS)
        assert self.error is None, repr(self.error)
        assert len(self.events) >= count, self.events
        return list(self.events)

    def stop(self) -> None:
        self.watch.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "close() did not end the watch"


def _types(events) -> list[EventType]:
    return [event.type for event in events]


# -- the SDK against a real server (both backends) --


def test_list_events_pages_filters_and_visibility(server) -> None:
    target = f"127.0.0.1:{server.port}"
    ada, ada_id = sign_up(target, "ada")
    bob, bob_id = sign_up(target, "bob")
    olga, _ = sign_up(target, "olga")
    grant_operator(server.database, "olga")
    with ada, bob, olga:
        loan = ada.create_loan("L1", 1000, term_weeks=2)  # starts today: nothing overdue
        assert loan.weekly_payment == Decimal("550.00")
        payoff = ada.make_payment("L1", "1100.00")
        olga.reverse_payment(payoff.payment_id, "cheque bounced")
        ada.create_loan("L2", 1000)
        bob.create_loan("L1", 1000)  # the same loan_id, another owner

        mine = ada.list_events()
        assert _types(mine) == [
            EventType.LOAN_CREATED,
            EventType.PAYMENT_ACCEPTED,
            EventType.LOAN_PAID_OFF,
            EventType.PAYMENT_REVERSED,
            EventType.LOAN_REOPENED,
            EventType.LOAN_CREATED,
        ]
        sequences = [event.sequence for event in mine]
        assert sequences == sorted(set(sequences))
        assert {event.owner for event in mine} == {ada_id}
        created, accepted, paid_off, reversed_, reopened, _ = mine
        assert isinstance(created.resource, Loan) and created.effective_date == today()
        assert created.resource.total_amount == Decimal("1100.00")
        assert isinstance(accepted.resource, Payment) and accepted.resource.payment_id == payoff.payment_id
        assert isinstance(paid_off.resource, Loan) and paid_off.resource.state is LoanState.PAID_OFF
        assert isinstance(reversed_.resource, Payment)
        assert (reversed_.resource.reversed, reversed_.resource.reversal_reason) == (True, "cheque bounced")
        assert isinstance(reopened.resource, Loan) and reopened.resource.state is LoanState.ACTIVE
        assert reopened.resource.outstanding_balance == Decimal("1100.00")
        assert created.occur_time is not None and created.occur_time <= reopened.occur_time

        assert ada.list_events(page_size=2) == mine[:2]
        assert tuple(ada.iter_events(page_size=2)) == mine
        assert ada.list_events(after_sequence=sequences[2]) == mine[3:]
        assert ada.list_events(after_sequence=sequences[-1]) == ()
        assert ada.list_events(loan_id="L1") == mine[:5]

        assert [(e.type, e.owner) for e in bob.list_events()] == [(EventType.LOAN_CREATED, bob_id)]
        everyone = list(olga.iter_events())  # an operator sees every owner's loans
        assert everyone[:6] == list(mine) and everyone[6].owner == bob_id
        assert [e.owner for e in olga.list_events(loan_id="L1")] == [ada_id] * 5 + [bob_id]
        with pytest.raises(InvalidArgument) as info:
            ada.list_events(after_sequence=-1)
        assert info.value.field == "after_sequence"


def test_watch_sends_the_backlog_then_live_events_and_stops_when_closed(server) -> None:
    target = f"127.0.0.1:{server.port}"
    ada, ada_id = sign_up(target, "ada")
    bob, _ = sign_up(target, "bob")
    with ada, bob:
        ada.create_loan("L1", 1000, term_weeks=2)
        bob.create_loan("B1", 1000)  # not ada's: never shown to her
        with ada.watch_events() as watch:
            seen = Collector(watch)
            assert _types(seen.wait_for(1)) == [EventType.LOAN_CREATED]  # the backlog
            ada.make_payment("L1", "550.00")
            ada.make_payment("L1", "550.00")
            events = seen.wait_for(4)  # live, as they commit
            assert _types(events) == [
                EventType.LOAN_CREATED,
                EventType.PAYMENT_ACCEPTED,
                EventType.PAYMENT_ACCEPTED,
                EventType.LOAN_PAID_OFF,
            ]
            assert {(e.loan_id, e.owner) for e in events} == {("L1", ada_id)}
            started = time.monotonic()
            seen.stop()  # from another thread than the one blocked waiting for the next event
            assert time.monotonic() - started < 2
            assert watch.closed and watch.last_sequence == events[-1].sequence
            assert list(watch) == []
        # A consumer that stored where it was resumes there, and can follow one loan.
        with ada.watch_events(after_sequence=events[1].sequence, loan_id="L1") as again:
            assert [next(again).type for _ in range(2)] == [
                EventType.PAYMENT_ACCEPTED,
                EventType.LOAN_PAID_OFF,
            ]
        with pytest.raises(InvalidArgument):  # refusals are raised, not retried
            next(ada.watch_events(loan_id="no spaces allowed"))


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["terminate", "kill"])
def test_watch_resumes_after_a_restart_without_gap_or_duplicate(
    database_url: str, tmp_path: Path, stop
) -> None:
    """The watched server goes away (SIGTERM: it ends the stream with UNAVAILABLE; SIGKILL: the
    connection drops); meanwhile another server on the same database records payments; then the
    first comes back on the same port. The watcher sees every event once, in order."""
    first = ServerProcess(database_url)
    # Started now, so that the port the kernel gives it cannot be the one `first` frees.
    elsewhere = create_server(make_settings(tmp_path, database_url=database_url))
    restarted = None
    try:
        client, _ = sign_up(first.target, "ada")
        with client:
            client.create_loan("L1", 5000000)  # starts today: weekly 110,000.00, nothing overdue
            waits: list[tuple[str, float]] = []
            watch = client.watch_events(
                initial_backoff=0.05,
                max_backoff=0.5,
                on_reconnect=lambda error, delay: waits.append((error.code.name, delay)),
            )
            seen = Collector(watch)
            client.make_payment("L1", 110000)
            seen.wait_for(2)

            getattr(first, stop)()
            first.wait_gone()
            with LendingClient(f"127.0.0.1:{elsewhere.port}", username="ada", password=PASSWORD) as other:
                other.make_payment("L1", 110000)
                other.make_payment("L1", "220000.00")
            assert len(seen.events) == 2  # the watcher is still cut off

            restarted = ServerProcess(database_url, "--listen", f"127.0.0.1:{first.port}")
            # A channel of its own: by default gRPC shares one connection per address within a
            # process, and the watcher's is still waiting out its reconnect backoff.
            own = [("grpc.use_local_subchannel_pool", 1)]
            with LendingClient(
                restarted.target, username="ada", password=PASSWORD, channel_options=own
            ) as back:
                back.make_payment("L1", 110000)  # through the server that came back
            started = time.monotonic()
            events = seen.wait_for(5)
            resumed_within = time.monotonic() - started
            time.sleep(0.5)  # room for a duplicate to show up, if there were one
            seen.stop()

            everything = list(client.iter_events())
            assert [e.sequence for e in seen.events] == [e.sequence for e in everything]
            assert _types(everything) == [EventType.LOAN_CREATED] + [EventType.PAYMENT_ACCEPTED] * 4
            assert [e.resource.amount for e in events[1:]] == [
                Decimal(a) for a in ("110000", "110000", "220000", "110000")
            ]
            assert waits and all(code == "UNAVAILABLE" for code, _ in waits)
            assert all(0 < delay <= 0.5 for _, delay in waits)
            assert resumed_within < 7  # the channel retries a lost server every 5 s at most
    finally:
        elsewhere.stop(0)
        if first.proc.poll() is None:
            first.kill()
        if restarted is not None:
            restarted.terminate()


@pytest.mark.settings(access_token_ttl_seconds=2)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_watch_renews_an_access_token_that_expires_mid_stream(server) -> None:
    target = f"127.0.0.1:{server.port}"
    sign_up(target, "ada")[0].close()
    renewed: list[Tokens] = []
    waits: list[str] = []
    with LendingClient(target, username="ada", password=PASSWORD, on_tokens=renewed.append) as ada:
        ada.create_loan("L1", 1000, term_weeks=4)  # weekly 275.00
        seen = Collector(ada.watch_events(on_reconnect=lambda error, delay: waits.append(error.code.name)))
        seen.wait_for(1)
        for count in (2, 3):
            time.sleep(2.5)  # the stream's token expired: the server ended it with UNAUTHENTICATED
            ada.make_payment("L1", "275.00")
            seen.wait_for(count)
        seen.stop()
    assert _types(seen.events) == [EventType.LOAN_CREATED] + [EventType.PAYMENT_ACCEPTED] * 2
    assert waits == []  # renewed and resumed at once, without a backoff
    assert len({tokens.access_token for tokens in renewed}) == len(renewed) >= 4


# -- what gRPC retries, against a stand-in that fails on cue --


class StandInEvents(events_pb2_grpc.EventServiceServicer):
    """ListEvents fails ``list_failures`` times; each WatchEvents plays the next script:
    the sequences to send, then the status to end with (None: wait until cancelled)."""

    def __init__(self, list_failures: int = 0, scripts=()) -> None:
        self.list_failures = list_failures
        self.list_calls = 0
        self.scripts = list(scripts)
        self.watches: list[tuple[int, str]] = []  # (after_sequence, authorization) per stream
        self.cancelled = threading.Event()

    def ListEvents(self, request, context):
        self.list_calls += 1
        if self.list_calls <= self.list_failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "database busy")
        return events_pb2.ListEventsResponse(events=[events_pb2.Event(sequence=7, loan_id="L1")])

    def WatchEvents(self, request, context):
        self.watches.append((request.after_sequence, dict(context.invocation_metadata())["authorization"]))
        sequences, end = self.scripts.pop(0) if self.scripts else ((), grpc.StatusCode.UNAVAILABLE)
        for sequence in sequences:
            yield events_pb2.Event(
                sequence=sequence, type=events_pb2.EVENT_TYPE_PAYMENT_ACCEPTED, loan_id="L1"
            )
        if end is not None:
            context.abort(end, f"scripted {end.name}")
        while context.is_active():
            time.sleep(0.01)
        self.cancelled.set()


class StandInAuth(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.refreshes = 0

    def RefreshToken(self, request, context):
        self.refreshes += 1
        return auth_pb2.Tokens(
            access_token=f"access-{self.refreshes + 1}",
            refresh_token=f"refresh-{self.refreshes + 1}",
            token_type="Bearer",
            expires_in=900,
            refresh_expires_in=604800,
        )


@pytest.fixture
def stand_in():
    servers = []

    def start(events: StandInEvents) -> tuple[str, StandInAuth]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        auth = StandInAuth()
        events_pb2_grpc.add_EventServiceServicer_to_server(events, server)
        auth_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", auth

    yield start
    for server in servers:
        server.stop(0).wait()


def _client(target: str) -> LendingClient:
    now = time.time()
    return LendingClient(target, tokens=Tokens("access-1", "refresh-1", now + 900, now + 86400), timeout=5)


def test_list_events_is_retried_but_the_stream_is_not(stand_in) -> None:
    events = StandInEvents(list_failures=2)
    target, _ = stand_in(events)
    with _client(target) as client:
        assert [e.sequence for e in client.list_events()] == [7]
        assert events.list_calls == 3  # two UNAVAILABLEs retried by gRPC, like the BillingService reads
        with pytest.raises(Unavailable):
            next(client.watch_events(max_reconnects=0))
        assert len(events.watches) == 1  # gRPC did not replay the stream by itself
        waits: list[float] = []
        with pytest.raises(Unavailable):
            next(
                client.watch_events(
                    max_reconnects=2,
                    initial_backoff=0.01,
                    max_backoff=0.02,
                    on_reconnect=lambda e, d: waits.append(d),
                )
            )
        assert len(events.watches) == 4 and len(waits) == 2  # the SDK's own reconnections


def test_watch_resumes_after_the_last_event_and_renews_a_rejected_token(stand_in) -> None:
    events = StandInEvents(
        scripts=[
            ((1, 2), grpc.StatusCode.UNAVAILABLE),  # the server goes away
            ((2, 3), grpc.StatusCode.UNAUTHENTICATED),  # repeats 2 (never shown twice); the token expires
            ((4,), None),  # then waits for more until the client cancels
        ]
    )
    target, auth = stand_in(events)
    with _client(target) as client:
        watch = client.watch_events(initial_backoff=0.01)
        assert [next(watch).sequence for _ in range(4)] == [1, 2, 3, 4]
        watch.close()
        assert events.cancelled.wait(5)  # closing cancelled the stream on the server
    assert events.watches == [(0, "Bearer access-1"), (2, "Bearer access-1"), (3, "Bearer access-2")]
    assert auth.refreshes == 1


def test_a_token_refused_right_after_renewal_is_raised_not_renewed_forever(stand_in) -> None:
    events = StandInEvents(scripts=[((), grpc.StatusCode.UNAUTHENTICATED)] * 3)
    target, auth = stand_in(events)
    with _client(target) as client, pytest.raises(Unauthenticated):
        next(client.watch_events())
    assert (len(events.watches), auth.refreshes) == (2, 1)


def test_other_errors_end_the_watch(stand_in) -> None:
    events = StandInEvents(scripts=[((5,), grpc.StatusCode.PERMISSION_DENIED)])
    target, _ = stand_in(events)
    with _client(target) as client:
        watch = client.watch_events()
        assert next(watch).sequence == 5
        with pytest.raises(PermissionDenied):
            next(watch)
        assert len(events.watches) == 1


# -- the command line --


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_events_one_line_each_and_json_lines(server, tmp_path: Path) -> None:
    target = f"127.0.0.1:{server.port}"
    sign_up(target, "ada")[0].close()
    ada = Cli(target, tmp_path / "ada").log_in("ada")
    ada("loan", "create", "L-1", "1000", "--term-weeks", "2")
    ada("pay", "L-1", "550")
    ada("loan", "create", "L-2", "2000000", "--start-date", "2026-01-05")  # created already delinquent
    day = today().isoformat()

    lines = ada("events").stdout.splitlines()
    assert lines[0] == "   SEQ  TIME                  TYPE                 EFFECTIVE   LOAN        DETAIL"
    assert [line[:6].strip() for line in lines[1:]] == ["1", "2", "3", "4"]
    assert [line[30:] for line in lines[1:4]] == [
        f"LOAN_CREATED         {day}  L-1         1,000.00 over 2 weeks at 0.10, weekly 550.00",
        f"PAYMENT_ACCEPTED     {day}  L-1         550.00 for week 1, outstanding 550.00",
        "LOAN_CREATED         2026-01-05  L-2         2,000,000.00 over 50 weeks at 0.10, weekly 44,000.00",
    ]
    # Effective the day after the second installment (2026-01-19) fell due, and as of that day.
    assert lines[4][30:] == (
        "DELINQUENCY_STARTED  2026-01-20  L-2         "
        "2 installments missed, 88,000.00 overdue, 8 days past due"
    )

    assert [line[:6].strip() for line in ada("events", "--after", "2").stdout.splitlines()[1:]] == ["3", "4"]
    assert [line[:6].strip() for line in ada("events", "--loan", "L-1").stdout.splitlines()[1:]] == ["1", "2"]
    assert ada("events", "--after", "4").stdout == "no events after sequence 4\n"

    records = [json.loads(line) for line in ada("events", "--json").stdout.splitlines()]
    assert [(r["sequence"], r["type"], r["loan_id"]) for r in records] == [
        (1, "LOAN_CREATED", "L-1"),
        (2, "PAYMENT_ACCEPTED", "L-1"),
        (3, "LOAN_CREATED", "L-2"),
        (4, "DELINQUENCY_STARTED", "L-2"),
    ]
    assert "resource" not in records[0] and records[0]["loan"]["weekly_payment"] == "550.00"
    assert (records[1]["payment"]["amount"], records[1]["payment"]["value_date"]) == ("550.00", day)
    assert records[3]["delinquency"]["is_delinquent"] is True
    assert records[0]["occur_time"].endswith("Z") and records[0]["effective_date"] == day
    assert ada("events", "--after", "4", "--json").stdout == ""

    for follow in ((), ("--follow",)):
        result = ada("events", "--after", "-1", *follow, ok=False)
        assert (result.returncode, result.stderr) == (
            1,
            "lending-grpc: INVALID_ARGUMENT: after_sequence: must not be negative\n",
        )


def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


def _next_line(lines: queue.Queue) -> str:
    try:
        return lines.get(timeout=WAIT_SECONDS)
    except queue.Empty:
        pytest.fail("events --follow printed nothing")


@pytest.mark.slow
@pytest.mark.parametrize("json_lines", [False, True], ids=["table", "json"])
def test_cli_events_follow_resumes_after_a_restart_and_ends_on_ctrl_c(
    tmp_path: Path, json_lines: bool
) -> None:
    settings = make_settings(tmp_path)  # SQLite: the storage is not what is tested here
    running = create_server(settings)
    port = running.port
    target = f"127.0.0.1:{port}"
    client, _ = sign_up(target, "ada")
    ada = Cli(target, tmp_path / "ada").log_in("ada")
    follow = subprocess.Popen(
        ada.command("events", "--follow", *(["--json"] if json_lines else [])),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ada.env(),
        cwd=ada.home,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(follow.stdout, lines), daemon=True).start()
    try:
        with client:
            if not json_lines:
                assert _next_line(lines).startswith("   SEQ  TIME")
            client.create_loan("L-1", 1000, term_weeks=2)
            first = _next_line(lines)

            running.stop(1.0)  # the stream ends with UNAVAILABLE
            running = create_server(make_settings(tmp_path, listen=target))  # same port, same database
            client.make_payment("L-1", "550.00")
            second = _next_line(lines)
            time.sleep(0.5)

            follow.send_signal(signal.SIGINT)
            assert follow.wait(WAIT_SECONDS) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
        running.stop(0)
    stderr = follow.stderr.read()
    assert "Traceback" not in stderr
    assert "lending-grpc: UNAVAILABLE: " in stderr and "(resuming after sequence 1 in " in stderr
    assert lines.empty()  # nothing twice
    if json_lines:
        assert [(r["sequence"], r["type"]) for r in map(json.loads, (first, second))] == [
            (1, "LOAN_CREATED"),
            (2, "PAYMENT_ACCEPTED"),
        ]
    else:
        assert (first.split()[0], first.split()[3]) == ("1", "LOAN_CREATED")
        assert second.split()[0] == "2" and second.split()[3] == "PAYMENT_ACCEPTED"
        assert second.endswith("L-1         550.00 for week 1, outstanding 550.00")
