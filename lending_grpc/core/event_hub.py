"""One event hub per server process: knows the newest event, wakes the watchers, numbers events.

Watchers (WatchEvents streams) never poll the database: they wait here until
the log has grown past their position, then read. The hub learns of new
events three ways: a commit in this process tells it at once
(``committed``), PostgreSQL's NOTIFY tells it of the commits of other
processes and machines, and a timer catches anything else (a SQLite file
shared by several processes, a missed notification). Whatever the number of
watchers, an idle process costs one small query per poll interval.

The hub also keeps the most recent events in memory, so that many watchers
following the head of the log share one read instead of one each; while
nobody watches it only tracks the newest sequence. Under a burst of writes it
refreshes at most every few milliseconds, one read for many commits.

On PostgreSQL it runs the numberer (``event_log.assign_sequences``) after
each local commit and on every tick, so events are numbered within
milliseconds, and those of a process that died after committing are numbered
by the survivors.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time

from lending_grpc.core import event_log
from lending_grpc.core.errors import LendingError
from lending_grpc.core.event_log import EventView
from lending_grpc.core.storage.database import LendingDatabase, is_database_failure

log = logging.getLogger(__name__)

CHANNEL = "lending_events"
RECENT_EVENTS = 4096  # kept in memory for watchers at the head of the log
_FETCH = 1000
_COMPLAINT_EVERY_S = 10.0
_LISTEN_RETRY_S = 5.0
# Under a burst of writes every commit wakes the hub: refreshing at most this often lets one read
# serve the commits of a few milliseconds, at no more than that in a watcher's latency.
_MIN_REFRESH_INTERVAL_S = 0.005
# How long after a watcher last asked the hub keeps recent events in memory for watchers.
_INTEREST_S = 5.0


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a log line without a traceback."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class EventHub:
    """See the module docstring. ``start`` it; ``stop`` it before closing the database."""

    def __init__(self, db: LendingDatabase, *, poll_s: float = 0.2) -> None:
        self._db = db
        self._poll_s = poll_s
        self._latest = 0
        # Every event after _floor, up to _latest, in order: a contiguous tail of the log.
        self._recent: collections.deque[EventView] = collections.deque(maxlen=RECENT_EVENTS)
        self._floor = 0
        self._changed = threading.Condition()
        self._wake = threading.Event()
        # Written to by `committed` and `stop`, so that the thread's select() on the LISTEN
        # connection returns at once instead of at its next timeout.
        self._wake_r = self._wake_w = -1  # the pipe, made by start()
        self._pipe_lock = threading.Lock()  # no write after the pipe is closed (fds get reused)
        self._pipe_open = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener = None
        self._last_complaint = float("-inf")
        self._listen_again_at = float("inf")  # after a lost LISTEN: when to try again
        # Recent events are read into memory only while someone watches (monotonic deadline).
        self._wanted_until = float("-inf")

    # -- lifecycle

    def start(self) -> None:
        """Read the newest sequence and start following the log."""
        with self._db.unit_of_work():
            self._latest = self._floor = event_log.latest_sequence(self._db)
        with self._pipe_lock:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._pipe_open = True
        self._listener = self._listen()
        self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following the log and release every watcher (they end their streams: UNAVAILABLE)."""
        self._stopping.set()
        self._wake.set()
        self._nudge()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
        with self._pipe_lock:
            if self._pipe_open:  # stop may be called twice
                self._pipe_open = False
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)

    @property
    def stopping(self) -> bool:
        """Whether the hub is stopping: the server is shutting down."""
        return self._stopping.is_set()

    # -- for writers and watchers

    def committed(self) -> None:
        """A transaction of this process that wrote events committed: number them, wake the watchers."""
        self._wake.set()
        self._nudge()

    def _nudge(self) -> None:
        with self._pipe_lock:
            if self._pipe_open:
                with contextlib.suppress(BlockingIOError):  # a full pipe is woken already
                    os.write(self._wake_w, b"!")

    @property
    def latest(self) -> int:
        """The newest event sequence the hub knows of."""
        return self._latest

    def wait_beyond(self, sequence: int, timeout: float) -> int:
        """Block until the log holds an event after ``sequence``, the timeout passes or the hub stops."""
        deadline = time.monotonic() + timeout
        self._wanted_until = deadline + _INTEREST_S
        with self._changed:
            while self._latest <= sequence and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._latest

    def recent_after(self, sequence: int) -> tuple[int, list[EventView]] | None:
        """(latest, every event after ``sequence`` up to it) from memory; None when memory lacks some."""
        self._wanted_until = time.monotonic() + _INTEREST_S
        with self._changed:
            if sequence < self._floor:
                return None
            return self._latest, [event for event in self._recent if event.sequence > sequence]

    # -- the thread

    def _listen(self):
        """A connection LISTENing for the numberer's notifications (PostgreSQL only)."""
        if self._db.kind != "postgresql":
            return None
        try:
            import psycopg

            # Outside the request pool, and named apart from it, so it never takes a call's slot.
            params = {**self._db.connect_params, "options": "", "application_name": "lending-grpc-events"}
            conn = psycopg.connect(dbname=self._db.database, autocommit=True, **params)
            conn.execute(f"LISTEN {CHANNEL}")
            return conn
        except Exception as exc:
            log.warning("event hub: cannot LISTEN for events (%s); polling instead", first_line(exc))
            return None

    def _wait_for_news(self) -> None:
        """Sleep until woken, notified or a poll interval passed."""
        if self._listener is None:
            self._wake.wait(self._poll_s)
            return
        deadline = time.monotonic() + self._poll_s
        listener = self._listener.fileno()
        while not self._wake.is_set() and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                ready, _, _ = select.select([listener, self._wake_r], [], [], remaining)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    return
                if ready:
                    self._listener.execute("SELECT 1")  # let psycopg read the notifications
                    if list(self._listener.notifies(timeout=0)):
                        return
            except Exception as exc:
                # The database went away or restarted: poll until LISTEN works again.
                log.warning("event hub: lost the LISTEN connection (%s); polling instead", first_line(exc))
                with contextlib.suppress(Exception):
                    self._listener.close()
                self._listener = None
                self._listen_again_at = time.monotonic() + _LISTEN_RETRY_S
                return

    def _run(self) -> None:
        while not self._stopping.is_set():
            if (
                self._listener is None
                and self._db.kind == "postgresql"
                and time.monotonic() >= self._listen_again_at
            ):
                self._listener = self._listen()
                if self._listener is None:
                    self._listen_again_at = time.monotonic() + _LISTEN_RETRY_S
            self._wait_for_news()
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._refresh()
                self._stopping.wait(_MIN_REFRESH_INTERVAL_S)
            except Exception as exc:
                # The database may be away for a while: watchers wait, nothing is lost. That is
                # weather, worth a line now and then; anything else is a bug, worth its traceback.
                if is_database_failure(exc) or isinstance(exc, LendingError):
                    now = time.monotonic()
                    if now - self._last_complaint >= _COMPLAINT_EVERY_S:
                        self._last_complaint = now
                        log.warning("event hub: cannot read the event log: %s", first_line(exc))
                else:
                    log.warning("event hub: cannot read the event log", exc_info=True)
                time.sleep(self._poll_s)

    def _refresh(self) -> None:
        with self._db.unit_of_work():
            event_log.assign_sequences(self._db)
            latest = event_log.latest_sequence(self._db)
            if latest <= self._latest:
                return
            fetched: list[EventView] | None = []
            # Nobody watching: keep only the number (a watcher that comes reads the database once).
            if latest - self._latest <= RECENT_EVENTS and time.monotonic() < self._wanted_until:
                known = self._latest
                while known < latest:
                    batch = event_log.read(self._db, known, _FETCH)
                    if not batch:
                        break
                    fetched += batch
                    known = batch[-1].sequence
                latest = max(latest, known)
            else:
                fetched = None  # too far behind: memory starts again from here
        with self._changed:
            if fetched is None:
                self._recent.clear()
                self._floor = latest
            else:
                self._recent.extend(fetched)
                if self._recent:
                    self._floor = max(self._floor, self._recent[0].sequence - 1)
            self._latest = latest
            self._changed.notify_all()
