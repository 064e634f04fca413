"""Relay the loan event log to NATS JetStream: every event exactly once, in sequence order, across crashes.

What it publishes. One stream (default ``LENDING_EVENTS``: subjects
``lending.events.>``, file storage, limits retention) receives every event of
the log (``core/event_log.py``) in sequence order, each as one message:

- subject ``lending.events.<type in lower case>``, e.g.
  ``lending.events.payment_accepted`` (the prefix is ``--subject-prefix``);
- payload: the protobuf ``lending.v1.Event``, the very message ``ListEvents``
  returns;
- headers ``Nats-Msg-Id: <sequence>`` (decimal) and
  ``Lending-Event-Type: EVENT_TYPE_PAYMENT_ACCEPTED``, plus the
  ``Nats-Expected-Last-Sequence`` guard described below, which JetStream
  stores with the message.

Why the stream holds each event exactly once, in order, whatever crashes:

- The log. The relay reads numbered events after its position, in sequence
  order. No event is ever numbered below one already numbered (the docstring
  of ``event_log``), so reading "after N" never skips one.
- Resuming. On start, and after any failure, the relay reads the stream's
  last message (``stream_info().state.last_seq``, then that message) and goes
  on after the sequence in its ``Nats-Msg-Id``. Whatever happened before (a
  SIGKILL between a publish and its ack, a connection lost with a window of
  publishes in flight) the stream itself says what it holds; the relay keeps
  no state of its own, and its position only ever moves past an event whose
  publish JetStream acknowledged.
- Nothing twice, no gap, no reordering. Every publish carries
  ``Nats-Expected-Last-Sequence``: the stream sequence of the message that
  holds the previous event. JetStream stores the message only while that one
  is still the stream's last, so an event can only land directly after its
  predecessor. A publish lost in flight makes every later one of its window
  fail (instead of leaving a gap); of two copies of one event (a publish
  whose ack was lost, sent again) at most one can be stored. After such a
  failure the relay reads the stream's last message again and goes on.
- ``Nats-Msg-Id`` = sequence adds JetStream's duplicate detection, which is
  checked first: an event sent again while its first copy is still in the
  duplicate window is acknowledged as a duplicate, not refused, so a lost
  ack costs no round of resynchronization. It also covers the one publish the
  guard cannot: the first into an empty stream (an expected last sequence of
  0 means "no check"). The window therefore only has to span the last window
  of publishes in flight plus a retry's delay (the default two minutes is
  ample); beyond it, correctness rests on the guard, not on the window.

The stream must be the relay's alone: another publisher on its subjects makes
the relay resynchronize, then stop with an error. Two relays on one stream
(a rolling update) stay correct, each going on after the other's messages.

Publishing. Up to ``max_in_flight`` publishes are pipelined, their acks
taken in order. Awaiting each ack before the next publish (``max_in_flight``
1) measured three to five times slower (``make bench``).

Failures. NATS unreachable at start, JetStream disabled, or a stream the
relay cannot use: ``RelayError`` (one line; the command exits 1). Later, a
lost connection, a missing ack or a refused publish: back off (0.5 s,
doubling to 30 s), connect again, resynchronize from the stream, go on. A
database that is away: back off and read again. SIGTERM/SIGINT: stop sending,
take the acks of the publishes in flight, return.

Waiting. The relay polls the log every ``poll_interval`` (0.2 s); on
PostgreSQL it first numbers committed events (``event_log.number_pending``),
so events are relayed even when no server process runs. An event reaches
the stream within about the poll interval of its commit.

nats-py is asynchronous, the database is not: reads run on one thread of
their own (one connection), everything else on one event loop (``run_relay``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import signal
import time

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from lending.v1 import events_pb2
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from prometheus_client import CollectorRegistry, Counter, Gauge

from lending_grpc.api import messages
from lending_grpc.core import event_log
from lending_grpc.core.errors import LendingError
from lending_grpc.core.event_log import EventView
from lending_grpc.core.plural import count
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.relay.options import RelayError, RelayOptions, subject_for

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Lending-Event-Type"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
# JetStream API error codes (err_code) the relay tells apart.
_WRONG_LAST_SEQUENCE = 10071
_STREAM_NOT_FOUND = 10059
_STREAM_NAME_IN_USE = 10058
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 5.0
SUMMARY_INTERVAL_S = 60.0


class _Transient(Exception):
    """NATS is away or did not answer in time: back off, connect again, resynchronize."""


_NATS_FAILURES = (_Transient, nats.errors.Error, OSError, TimeoutError)


def _subject_matches(pattern: str, subject: str) -> bool:
    """Whether a NATS subject pattern (``*`` one token, ``>`` the rest) takes ``subject``."""
    tokens, wanted = pattern.split("."), subject.split(".")
    for index, token in enumerate(tokens):
        if token == ">":
            return len(wanted) > index
        if index >= len(wanted) or (token != "*" and token != wanted[index]):
            return False
    return len(tokens) == len(wanted)


class RelayMetrics:
    """The relay's series, in ``registry``: its position (for lag alerts) and its throughput."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_published_sequence = Gauge(
            "lending_relay_last_published_sequence",
            "Sequence of the newest event the stream holds, as JetStream acknowledged it to this relay.",
            registry=registry,
        )
        self.published = Counter(
            "lending_relay_published_events",
            "Events JetStream acknowledged to this relay since it started (duplicates it dropped included).",
            registry=registry,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class _Outgoing:
    sequence: int
    subject: str
    type_name: str  # EVENT_TYPE_..., the Lending-Event-Type header
    payload: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class _Position:
    event: int  # the newest event sequence the stream holds (or the start, before the first)
    stream_seq: int  # the stream sequence of the message holding it (0: none yet)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less when ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def _text(value) -> str:
    """An enum's value, or the string nats-py left in its place."""
    return str(getattr(value, "value", value) or "")


def _describe(exc: BaseException) -> str:
    """One line about a NATS failure, for the log."""
    if isinstance(exc, nats.js.errors.APIError):
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            return "the stream's last message is not the one this relay published last (lost in flight?)"
        return f"JetStream refused: {exc.description or type(exc).__name__} (err_code {exc.err_code})"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class JetStreamRelay:
    """Publishes the event log into one JetStream stream; see the module docstring."""

    def __init__(
        self, db: LendingDatabase, options: RelayOptions, metrics: RelayMetrics | None = None
    ) -> None:
        options.validate()
        self._db = db
        self._o = options
        self._metrics = metrics
        self._subjects = {kind: subject_for(options.subject_prefix, kind) for kind in event_log.EVENT_TYPES}
        self._type_names = {kind: f"EVENT_TYPE_{kind}" for kind in event_log.EVENT_TYPES}
        # One thread for the database: one connection, used by one thread at a time.
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="relay-db")
        self._position: _Position | None = None
        self._nc = None
        self._js = None
        self._lost: asyncio.Event | None = None
        self._lost_waiter: asyncio.Future | None = None
        self._summary_count = 0
        self._summary_since = time.monotonic()

    @property
    def last_published_sequence(self) -> int:
        """The newest event sequence the stream is known to hold (0 before the first)."""
        return self._position.event if self._position else 0

    # -- the loop

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; raises RelayError when it cannot start or go on."""
        delay = BACKOFF_FIRST_S
        try:
            await self._open_session(first=True)
            log.info(
                "relay: publishing events after sequence %d to stream %s (subjects %s.*) on %s",
                self._position.event,
                self._o.stream,
                self._o.subject_prefix,
                ", ".join(self._o.servers),
            )
            while not stop.is_set():
                try:
                    if self._js is None:
                        await self._open_session()
                        log.info("relay: reconnected; the stream holds events up to %d", self._position.event)
                    page = await self._read(self._position.event)
                    if page:
                        await self._publish(page, stop)
                    delay = BACKOFF_FIRST_S
                    self._summarize()
                    if len(page) < self._o.page_size:
                        await _sleep_unless(stop, self._o.poll_interval)
                except LendingError as exc:  # the database is away or busy
                    log.warning(
                        "relay: cannot read the event log (%s); retrying in %.1f s", exc.message, delay
                    )
                    await _sleep_unless(stop, delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                except _NATS_FAILURES as exc:
                    log.warning("relay: %s; reconnecting in %.1f s", _describe(exc), delay)
                    await self._close_session()
                    await _sleep_unless(stop, delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
        finally:
            await self._close_session()
            await self._close_reader()
            if self._position is not None:
                self._summarize(final=True)

    # -- NATS

    async def _open_session(self, *, first: bool = False) -> None:
        """Connect, make sure of the stream, and take the position from it."""
        failures: list[BaseException] = []
        lost = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            failures.append(exc)
            log.debug("relay: nats: %s", _describe(exc))

        async def on_lost() -> None:
            lost.set()

        try:
            nc = await nats.connect(
                servers=self._o.servers,
                name="lending-grpc relay",
                # A lost connection ends the session; the loop connects again and resynchronizes.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                connect_timeout=CONNECT_TIMEOUT_S,
                error_cb=on_error,
                disconnected_cb=on_lost,
                closed_cb=on_lost,
            )
        except (*_NATS_FAILURES, ValueError) as exc:
            cause = _describe(failures[-1] if failures else exc)
            message = f"cannot connect to NATS at {self._o.nats_url}: {cause}"
            if first:
                raise RelayError(message) from None
            raise _Transient(message) from None
        self._nc, self._lost = nc, lost
        self._js = nc.jetstream(timeout=self._o.ack_timeout, publish_async_max_pending=self._o.max_in_flight)
        self._lost_waiter = asyncio.ensure_future(lost.wait())
        try:
            await self._ensure_stream(first)
            await self._resync(first)
        except BaseException:
            await self._close_session()
            raise

    async def _close_session(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if self._lost_waiter is not None:
            self._lost_waiter.cancel()
            self._lost_waiter = None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), CONNECT_TIMEOUT_S)
            except Exception as exc:  # closing a broken connection: nothing left to save
                log.debug("relay: closing the NATS connection: %s", _describe(exc))

    async def _ensure_stream(self, first: bool) -> None:
        """Create the stream, or check that the existing one can take the relay's messages."""
        name = self._o.stream
        try:
            try:
                info = await self._js.stream_info(name)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code != _STREAM_NOT_FOUND:
                    raise
                info = await self._create_stream()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            message = f"JetStream is not enabled on NATS at {self._o.nats_url} (start nats-server with -js)"
            if first:
                raise RelayError(message) from exc
            raise _Transient(message) from exc
        config = info.config
        retention = _text(config.retention) or RetentionPolicy.LIMITS.value
        if retention != RetentionPolicy.LIMITS.value:
            raise RelayError(
                f"stream {name} has {retention} retention: the relay resumes from the stream's "
                "last message, which only limits retention keeps; use another --stream"
            )
        foreign = [
            subject
            for subject in self._subjects.values()
            if not any(_subject_matches(pattern, subject) for pattern in config.subjects or ())
        ]
        if foreign:
            raise RelayError(
                f"stream {name} does not take subject {foreign[0]} (its subjects: "
                f"{', '.join(config.subjects or ())}); use another --stream or --subject-prefix"
            )
        if first:
            log.info(
                "relay: stream %s: %s storage, duplicate window %s s, max age %s, %s",
                name,
                _text(config.storage) or "file",
                f"{config.duplicate_window:g}" if config.duplicate_window else "default",
                f"{config.max_age:g} s" if config.max_age else "unlimited",
                count(info.state.messages, "message"),
            )

    async def _create_stream(self):
        o = self._o
        config = StreamConfig(
            name=o.stream,
            description="lending-grpc loan events, published by `lending-grpc relay`",
            subjects=[f"{o.subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            duplicate_window=o.duplicate_window,
            max_age=o.max_age or None,
            max_bytes=o.max_bytes,
            num_replicas=o.replicas,
        )
        try:
            info = await self._js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:  # another relay created it a moment ago
                raise RelayError(f"cannot create stream {o.stream}: {exc.description}") from None
            return await self._js.stream_info(o.stream)
        log.info("relay: created stream %s for subjects %s.>", o.stream, o.subject_prefix)
        return info

    async def _resync(self, first: bool) -> None:
        """Take the position from the stream's last message (see the module docstring)."""
        name, after = self._o.stream, self._o.after
        state = (await self._js.stream_info(name)).state
        if state.messages:
            try:
                last = await self._js.get_msg(name, state.last_seq)
            except nats.js.errors.NotFoundError:
                raise RelayError(
                    f"stream {name}: its last message (stream sequence {state.last_seq}) was deleted, so the "
                    "relay cannot tell which events the stream holds; purge the stream and start with "
                    "--after SEQUENCE (the last event consumers received), or use a new --stream"
                ) from None
            position = _Position(await self._check_last_message(last), state.last_seq)
            if first and after is not None and after != position.event:
                log.warning(
                    "relay: --after %d ignored: stream %s already holds events up to %d",
                    after,
                    name,
                    position.event,
                )
        elif state.last_seq == 0:
            position = _Position(after or 0, 0)  # a new stream
        elif self._position is not None and self._position.stream_seq == state.last_seq:
            position = self._position  # emptied (max age, purge) while this relay ran: it knows where it was
        elif after is not None:
            position = _Position(after, state.last_seq)
        else:
            raise RelayError(
                f"stream {name} holds no message but has held {state.last_seq} (expired by its max age, or "
                "purged), so the relay cannot tell which events it published; start it with --after SEQUENCE "
                "(the last event sequence consumers received), or use a new --stream"
            )
        if not state.messages:
            latest = await self._in_reader(self._latest_sequence)
            if position.event > latest:
                raise RelayError(f"--after {position.event} is beyond the newest event of the log, {latest}")
        self._position = position
        if self._metrics is not None:
            self._metrics.last_published_sequence.set(position.event)

    async def _check_last_message(self, last) -> int:
        """The event sequence of the stream's last message, once sure it is this log's event."""
        name = self._o.stream
        text = (last.headers or {}).get(MSG_ID, "")
        try:
            held = events_pb2.Event.FromString(last.data)
        except DecodeError:
            held = None
        if not text.isdigit() or held is None or held.sequence != int(text):
            raise RelayError(
                f"stream {name}: its last message ({last.subject}, stream sequence {last.seq}) is not an "
                "event the relay published: something else publishes to the relay's stream"
            )
        ours = await self._in_reader(self._event_at, held.sequence)
        if ours is None or (f"EVENT_TYPE_{ours.type}", ours.loan_id, ours.owner) != (
            events_pb2.EventType.Name(held.type),
            held.loan_id,
            held.owner,
        ):
            raise RelayError(
                f"stream {name} ends with event {held.sequence}, which is not that event of this database's "
                "log: the stream was fed from another database (or this one was restored from a backup); "
                "use another --stream"
            )
        return held.sequence

    # -- publishing

    async def _publish(self, page: list[_Outgoing], stop: asyncio.Event) -> None:
        """Publish ``page`` in order with up to max_in_flight unacknowledged; stop early on ``stop``."""
        started = time.monotonic()
        first = self._position.event
        pending: collections.deque[tuple[_Outgoing, asyncio.Future]] = collections.deque()
        expected = self._position.stream_seq  # where the previous event is (or will be) in the stream
        publish = self._js.publish_async
        try:
            for item in page:
                if stop.is_set():
                    break
                if len(pending) >= self._o.max_in_flight:
                    await self._settle(*pending.popleft())
                headers = {MSG_ID: str(item.sequence), EVENT_TYPE: item.type_name}
                if expected:
                    headers[EXPECTED_LAST_SEQUENCE] = str(expected)
                pending.append((item, await publish(item.subject, item.payload, headers=headers)))
                expected += 1
            while pending:
                await self._settle(*pending.popleft())
        finally:
            for _item, future in pending:  # given up: the stream is read again before going on
                future.cancel()
            done = self._position.event
            if done > first:
                log.debug(
                    "relay: published events %d-%d in %.3f s",
                    first + 1,
                    done,
                    time.monotonic() - started,
                )

    async def _settle(self, item: _Outgoing, future: asyncio.Future) -> None:
        """Wait for one publish's ack, then move the position past its event."""
        if not future.done():
            done, _ = await asyncio.wait(
                (future, self._lost_waiter), timeout=self._o.ack_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if future not in done:
                if self._lost.is_set():
                    raise _Transient("lost the connection to NATS")
                raise _Transient(f"JetStream did not acknowledge within {self._o.ack_timeout:g} s")
        ack = future.result()
        self._position = _Position(item.sequence, ack.seq)
        self._summary_count += 1
        if self._metrics is not None:
            self._metrics.last_published_sequence.set(item.sequence)
            self._metrics.published.inc()

    def _summarize(self, *, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._summary_since
        if not final and elapsed < SUMMARY_INTERVAL_S:
            return
        if self._summary_count or final:
            log.info(
                "relay: %s%s published in %.0f s (%.0f/s); the stream holds events up to %d",
                "stopping: " if final else "",
                count(self._summary_count, "event"),
                elapsed,
                self._summary_count / elapsed if elapsed > 0 else 0.0,
                self.last_published_sequence,
            )
        self._summary_count, self._summary_since = 0, now

    # -- the database, on the reader thread

    async def _in_reader(self, work, *args):
        return await asyncio.get_running_loop().run_in_executor(self._reader, work, *args)

    async def _read(self, after: int) -> list[_Outgoing]:
        return await self._in_reader(self._fetch, after)

    def _fetch(self, after: int) -> list[_Outgoing]:
        with self._db.unit_of_work():
            event_log.number_pending(self._db)  # PostgreSQL: committed events get their numbers
            views = event_log.read(self._db, after, self._o.page_size)
        return [
            _Outgoing(
                view.sequence,
                self._subjects[view.type],
                self._type_names[view.type],
                messages.event(view).SerializeToString(),
            )
            for view in views
        ]

    def _event_at(self, sequence: int) -> EventView | None:
        with self._db.unit_of_work():
            event_log.number_pending(self._db)
            found = event_log.read(self._db, sequence - 1, 1)
        return found[0] if found and found[0].sequence == sequence else None

    def _latest_sequence(self) -> int:
        with self._db.unit_of_work():
            event_log.number_pending(self._db)
            return event_log.latest_sequence(self._db)

    async def _close_reader(self) -> None:
        def close() -> None:
            if not self._db.is_closed():
                self._db.close()

        try:
            await self._in_reader(close)
        finally:
            self._reader.shutdown(wait=True)


def run_relay(db: LendingDatabase, options: RelayOptions, *, metrics_listen: str = "") -> int:
    """Relay until SIGTERM or SIGINT (exit code 0); RelayError when it cannot start or go on.

    ``metrics_listen`` (host:port) serves ``lending_relay_last_published_sequence``
    on /metrics.
    """
    options.validate()
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    server = None
    if metrics_listen:
        from lending_grpc.api.metrics import MetricsServer

        server = MetricsServer(metrics_listen, registry)
        log.info("relay: metrics on http://%s:%d/metrics", metrics_listen.rpartition(":")[0], server.port)
    try:
        asyncio.run(_relay_until_signalled(JetStreamRelay(db, options, metrics)))
    finally:
        if server is not None:
            server.stop()
    return 0


async def _relay_until_signalled(relay: JetStreamRelay) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            log.info("relay: %s: finishing the publishes in flight", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await relay.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
