"""`lending-grpc relay`: the event log in NATS JetStream, every event once and in order, crashes included.

These tests need the NATS server with JetStream that every machine of this
kind runs on 127.0.0.1:4222 (TEST_NATS_URL to use another). They fail, not
skip, when it is down: the message says how to start it. Each test uses a
stream and subject prefix of its own and deletes the stream afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from zoneinfo import ZoneInfo

import nats
import nats.js.errors
import pytest
from helpers import child_env
from lending.v1 import billing_pb2, events_pb2
from nats.js.api import RetentionPolicy, StreamConfig

from lending_grpc.api import messages
from lending_grpc.cli.relay_command import duration
from lending_grpc.core import event_log
from lending_grpc.relay.jetstream import _subject_matches
from lending_grpc.relay.options import RelayError, RelayOptions, subject_for

NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
START_NATS = (
    "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
    "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
)
TODAY = dt.datetime.now(ZoneInfo("Asia/Jakarta")).date()  # the test servers' time zone


# -- NATS, from synchronous tests ------------------------------------------------------------------


class Nats:
    """One NATS connection driven from synchronous code (its own event loop)."""

    def __init__(self, url: str = NATS_URL) -> None:
        self._loop = asyncio.new_event_loop()
        self.nc = self.run(
            nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3)
        )
        self.js = self.nc.jetstream()

    def run(self, coroutine):
        return self._loop.run_until_complete(coroutine)

    def count(self, stream: str) -> int:
        """Messages in ``stream`` (0 before it exists)."""
        try:
            return self.run(self.js.stream_info(stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    def messages(self, stream: str) -> list:
        """Every message of ``stream``, in stream order."""
        state = self.run(self.js.stream_info(stream)).state
        if not state.messages:
            return []
        return [self.run(self.js.get_msg(stream, seq)) for seq in range(state.first_seq, state.last_seq + 1)]

    def delete(self, stream: str) -> None:
        try:
            self.run(self.js.delete_stream(stream))
        except nats.js.errors.NotFoundError:
            pass

    def close(self) -> None:
        self.run(self.nc.close())
        self._loop.close()


@pytest.fixture(scope="session")
def jetstream() -> Nats:
    """The machine's NATS with JetStream; a failure (never a skip) saying how to start it when down."""
    try:
        client = Nats()
        client.run(client.js.account_info())
    except Exception as exc:
        pytest.fail(
            f"NATS with JetStream is not usable at {NATS_URL} ({type(exc).__name__}: {exc}). "
            f"Every machine of this kind runs it; start it with: {START_NATS}",
            pytrace=False,
        )
    yield client
    client.close()


@pytest.fixture
def stream(jetstream: Nats):
    """(stream name, subject prefix) of this test alone; the stream is deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    name = f"TEST_RELAY_{tag}"
    yield name, f"test.relay.{tag}"
    jetstream.delete(name)


# -- the relay as a real process -----------------------------------------------------------------

_METRICS = re.compile(r"metrics on http://[^\s]+:(\d+)/metrics")


class RelayProcess:
    """`python -m lending_grpc relay` as a child process, its log collected."""

    started: list[RelayProcess] = []  # killed after each test if still running (a failed test's)

    def __init__(
        self, database_url: str, stream: tuple[str, str], *extra: str, nats_url: str = NATS_URL
    ) -> None:
        name, prefix = stream
        argv = [sys.executable, "-m", "lending_grpc", "relay", nats_url, "--stream", name]
        argv += ["--subject-prefix", prefix, "--database-url", database_url, *extra]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(LENDING_LOG_LEVEL="DEBUG"),
            cwd=tempfile.mkdtemp(),  # no stray .env
        )
        RelayProcess.started.append(self)
        self.log: list[str] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            if "relay: publishing events after sequence" in line:
                self._started.set()
        self._started.set()

    def wait_started(self, timeout: float = 30) -> None:
        assert self._started.wait(timeout) and self.proc.poll() is None, (
            "relay did not start:\n" + self.text()
        )

    def text(self) -> str:
        return "".join(self.log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int | None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._reader.join(5)
        return code

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


@pytest.fixture(autouse=True)
def _no_relay_outlives_its_test():
    yield
    while RelayProcess.started:
        relay = RelayProcess.started.pop()
        if relay.proc.poll() is None:
            relay.kill()


def wait_until(condition, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


# -- writing events through the server, and reading the log --------------------------------------


def create_loan(api, metadata, loan_id: str, **fields) -> None:
    api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id=loan_id, principal_amount="5000000", **fields),
        metadata=metadata,
    )


def pay(api, metadata, loan_id: str, amount: str = "110000.00") -> None:
    api.billing.MakePayment(
        billing_pb2.MakePaymentRequest(loan_id=loan_id, amount=amount, request_id=str(uuid.uuid4())),
        metadata=metadata,
        timeout=30,
    )


def the_log(api) -> list:
    """Every event of the server's log, in sequence order."""
    db = api.server.database
    events, after = [], 0
    with db.unit_of_work():
        event_log.number_pending(db)
        while batch := event_log.read(db, after, 1000):
            events += batch
            after = batch[-1].sequence
    return events


def assert_stream_is_the_log(jetstream: Nats, stream: tuple[str, str], log: list) -> None:
    """The stream holds each event of ``log`` once, in sequence order, as the relay promises."""
    name, prefix = stream
    held = jetstream.messages(name)
    ids = [int(message.headers["Nats-Msg-Id"]) for message in held]
    assert len(ids) == len(set(ids)), "an event is in the stream twice"
    assert ids == [event.sequence for event in log]
    for message, event in zip(held, log, strict=True):
        assert message.subject == f"{prefix}.{event.type.lower()}"
        assert message.headers["Lending-Event-Type"] == f"EVENT_TYPE_{event.type}"
        payload = events_pb2.Event.FromString(message.data)
        assert payload == messages.event(event)


# -- tests ----------------------------------------------------------------------------------------


def test_subjects_options_and_durations():
    assert subject_for("lending.events", event_log.PAYMENT_ACCEPTED) == "lending.events.payment_accepted"
    assert _subject_matches("lending.events.>", "lending.events.loan_created")
    assert _subject_matches("lending.*.loan_created", "lending.events.loan_created")
    assert _subject_matches(">", "lending.events.loan_created")
    assert not _subject_matches("lending.events.>", "lending.events")
    assert not _subject_matches("lending.events.*", "lending.events.a.b")
    assert not _subject_matches("lending.event.>", "lending.events.loan_created")
    assert duration("90") == 90 and duration("2m") == 120 and duration("7d") == 7 * 86400
    assert duration("250ms") == 0.25
    RelayOptions("nats://127.0.0.1:4222").validate()
    for bad in (
        {"nats_url": "127.0.0.1:4222"},
        {"stream": "has.dot"},
        {"subject_prefix": "lending.*"},
        {"subject_prefix": "lending..events"},
        {"max_in_flight": 0},
        {"after": -1},
        {"max_age": 60.0, "duplicate_window": 120.0},
    ):
        with pytest.raises(RelayError):
            RelayOptions(**{"nats_url": "nats://127.0.0.1:4222", **bad}).validate()


def test_relay_publishes_each_event_once_in_order(api, alice, database_url, stream, jetstream, tmp_path):
    # Every kind of event a borrower's own calls produce.
    create_loan(api, alice, "plain")
    for _ in range(3):
        pay(api, alice, "plain")
    create_loan(api, alice, "short", term_weeks=2)
    pay(api, alice, "short", "5500000.00")  # paid off at once
    create_loan(api, alice, "late", start_date=(TODAY - dt.timedelta(days=30)).isoformat())  # delinquent
    pay(api, alice, "late", "440000.00")  # the 4 missed weeks: current again
    log = the_log(api)
    kinds = {event.type for event in log}
    assert {"LOAN_CREATED", "PAYMENT_ACCEPTED", "LOAN_PAID_OFF", "DELINQUENCY_STARTED"} <= kinds
    assert "DELINQUENCY_ENDED" in kinds

    relay = RelayProcess(database_url, stream, "--metrics-listen", "127.0.0.1:0")
    try:
        relay.wait_started()
        name, _prefix = stream
        wait_until(lambda: jetstream.count(name) >= len(log), what="the relay to publish the log")
        port = int(_METRICS.search(relay.text()).group(1))
        gauge = f"lending_relay_last_published_sequence {float(log[-1].sequence)}"
        wait_until(
            lambda: (
                gauge in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            ),
            timeout=5,
            what=gauge,
        )
        # Live events arrive within about a poll interval.
        pay(api, alice, "plain")
        log = the_log(api)
        started = time.monotonic()
        wait_until(lambda: jetstream.count(name) == len(log), timeout=5, what="a live event")
        assert time.monotonic() - started < 1.0
    finally:
        assert relay.terminate() == 0, relay.text()
    assert_stream_is_the_log(jetstream, stream, log)
    assert log[0].owner not in relay.text()  # events' contents are never logged
    info = jetstream.run(jetstream.js.stream_info(stream[0]))
    assert info.config.subjects == [f"{stream[1]}.>"]
    assert info.config.duplicate_window == 120

    # Restarted after a clean stop, with events written meanwhile: it goes on after the stream's last.
    pay(api, alice, "plain")
    create_loan(api, alice, "later")
    log = the_log(api)
    relay = RelayProcess(database_url, stream, "--after", "1")
    try:
        relay.wait_started()
        wait_until(lambda: jetstream.count(stream[0]) >= len(log), what="the events written while stopped")
        time.sleep(0.3)  # a further poll publishes nothing twice
    finally:
        assert relay.terminate() == 0, relay.text()
    assert_stream_is_the_log(jetstream, stream, log)
    assert "--after 1 ignored" in relay.text()

    # Pointed at another database, the relay refuses the stream rather than skip or mix events.
    other = RelayProcess(f"sqlite:///{tmp_path / 'other.db'}", stream)
    assert other.wait() == 1
    assert "the stream was fed from another database" in other.text()


LOANS = 8
BACKLOG_WEEKS = 20  # paid before the relay first starts
BURST_WEEKS = 30  # paid while relays start and are killed; the loans end paid off
BURST_PAUSE_S = 0.1
KILLS = 4


@pytest.mark.slow
@pytest.mark.settings(rate_limit_user_per_second=0)  # one user pays for every loan at once
def test_sigkill_mid_burst_then_restart_holds_every_event_once_in_order(
    api, alice, database_url, stream, jetstream
):
    name, _prefix = stream
    for n in range(LOANS):
        create_loan(api, alice, f"loan-{n}")

    def pay_weeks(weeks: int, pause: float = 0.0) -> None:
        def pay_loan(n: int) -> None:
            for _ in range(weeks):
                pay(api, alice, f"loan-{n}")
                time.sleep(pause)

        with ThreadPoolExecutor(max_workers=LOANS) as pool:
            # One thread per loan: each loan's payments in order, the loans concurrently.
            list(pool.map(pay_loan, range(LOANS)))

    pay_weeks(BACKLOG_WEEKS)
    # Paced to outlast the relays' starts and kills (a relay takes ~0.7 s to start).
    burst = ThreadPoolExecutor(max_workers=1).submit(pay_weeks, BURST_WEEKS, BURST_PAUSE_S)
    kills = []  # (events in the stream when killed, events in the log then, whether the burst had ended)
    try:
        for _ in range(KILLS):
            relay = RelayProcess(database_url, stream)
            relay.wait_started()
            before = jetstream.count(name)
            # Kill it as soon as it has published something: mid-page, with publishes in flight.
            wait_until(
                lambda b=before: jetstream.count(name) > b or (burst.done() and b >= len(the_log(api))),
                what="the relay to publish",
            )
            relay.kill()
            kills.append((jetstream.count(name), len(the_log(api)), burst.done()))
    finally:
        burst.result()
    relay = RelayProcess(database_url, stream)
    try:
        relay.wait_started()
        log = the_log(api)
        assert len(log) == LOANS * (1 + BACKLOG_WEEKS + BURST_WEEKS + 1)  # created, paid, paid off
        wait_until(lambda: jetstream.count(name) >= len(log), what="the relay to catch up")
        time.sleep(0.3)
    finally:
        assert relay.terminate() == 0, relay.text()
    assert_stream_is_the_log(jetstream, stream, log)
    # The kills came mid-burst: payments went on being logged after a relay died, for the next
    # relay to take up where the stream ended. (Whether the log was ahead of the stream at the very
    # moment of a kill is a race the relay usually wins: it publishes in milliseconds.)
    assert any(not burst_over for _held, _logged, burst_over in kills), kills
    print(f"kills (stream held, log held, burst over): {kills}; {len(log)} events")


class CuttableProxy:
    """A TCP proxy to NATS that can be cut (connections dropped, new ones refused) and restored.

    It passes what the client sends slowly (``chunk`` bytes every ``pause``
    seconds), so that a cut lands while publishes are in flight.
    """

    def __init__(self, upstream: tuple[str, int], chunk: int = 1024, pause: float = 0.002) -> None:
        self._upstream = upstream
        self._chunk, self._pause = chunk, pause
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._serve()

    def _serve(self) -> None:
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b, slow in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(a, b, slow), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        try:
            while data := source.recv(self._chunk if slow else 65536):
                sink.sendall(data)
                if slow:
                    time.sleep(self._pause)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._serve()

    def close(self) -> None:
        self.cut()


@pytest.mark.slow
def test_nats_going_away_mid_run_loses_nothing(api, alice, database_url, stream, jetstream):
    name, _prefix = stream
    create_loan(api, alice, "loan", term_weeks=250)  # installments of 22000.00
    for _ in range(40):
        pay(api, alice, "loan", "22000.00")
    host, port = NATS_URL.rsplit("/", 1)[1].split(":")
    proxy = CuttableProxy((host, int(port)))
    relay = RelayProcess(
        database_url, stream, "--ack-timeout", "1", nats_url=f"nats://127.0.0.1:{proxy.port}"
    )
    try:
        relay.wait_started()
        wait_until(lambda: jetstream.count(name) > 0, what="the relay to publish")
        proxy.cut()  # mid-drain, publishes in flight
        for _ in range(10):
            pay(api, alice, "loan", "22000.00")
        time.sleep(1.0)
        assert relay.proc.poll() is None, relay.text()
        proxy.restore()
        log = the_log(api)
        wait_until(lambda: jetstream.count(name) >= len(log), what="the relay to catch up after the outage")
        time.sleep(0.3)
    finally:
        code = relay.terminate()
        proxy.close()
    assert code == 0, relay.text()
    assert "reconnecting in" in relay.text()
    assert_stream_is_the_log(jetstream, stream, log)


def test_unreachable_nats_is_a_one_line_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "lending_grpc", "relay", f"nats://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(LENDING_DATABASE_URL=f"sqlite:///{tmp_path / 'lending.db'}"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("lending-grpc:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"lending-grpc: relay: cannot connect to NATS at nats://127.0.0.1:{port}: ")
    assert "Traceback" not in result.stderr


def test_a_stream_that_cannot_say_where_it_was_is_refused(tmp_path, stream, jetstream):
    """A stream the relay cannot trust to say where it was is refused: one with foreign messages, or
    whose messages are all gone (max age, purge) unless --after says; one with other retention."""
    name, prefix = stream
    url = f"sqlite:///{tmp_path / 'lending.db'}"
    jetstream.run(jetstream.js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"])))
    jetstream.run(jetstream.js.publish(f"{prefix}.loan_created", b"x", headers={"Nats-Msg-Id": "7"}))
    relay = RelayProcess(url, stream)
    assert relay.wait() == 1
    assert "something else publishes to the relay's stream" in relay.text()
    jetstream.run(jetstream.js.purge_stream(name))
    relay = RelayProcess(url, stream)
    assert relay.wait() == 1
    assert "start it with --after SEQUENCE" in relay.text()
    # With --after it goes on (the log is empty: the position is checked against it).
    relay = RelayProcess(url, stream, "--after", "0")
    relay.wait_started()
    assert relay.terminate() == 0, relay.text()

    jetstream.delete(name)
    jetstream.run(
        jetstream.js.add_stream(
            StreamConfig(name=name, subjects=[f"{prefix}.>"], retention=RetentionPolicy.WORK_QUEUE)
        )
    )
    relay = RelayProcess(url, stream)
    assert relay.wait() == 1
    assert "workqueue retention" in relay.text()
