"""Runs the daily close inside the server: at start-up for the days missed, then shortly after midnight.

Every server process runs one; the close itself is idempotent and takes a
database lock (``core/daily_close.py``), so however many processes or
machines run it, each day is closed once. Deployments that prefer a
Kubernetes CronJob (`lending-grpc close-day`) turn it off with
LENDING_DAILY_CLOSE=false.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading

from lending_grpc.core import daily_close
from lending_grpc.core.clock import Clock
from lending_grpc.core.errors import LendingError
from lending_grpc.core.event_hub import first_line
from lending_grpc.core.storage.database import LendingDatabase, is_database_failure

log = logging.getLogger(__name__)

AFTER_MIDNIGHT_S = 5.0  # a little past midnight, so "today" is surely the new day
RETRY_S = 30.0


class DailyCloseScheduler:
    """A thread that closes each new day; ``stop`` it before closing the database."""

    def __init__(self, db: LendingDatabase, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daily-close", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _seconds_to_next_close(self) -> float:
        now = dt.datetime.now(self._clock.zone)
        midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), now.tzinfo)
        # Spread the processes a little: one closes, the others find the day closed.
        return (midnight - now).total_seconds() + AFTER_MIDNIGHT_S + random.uniform(0, 2)

    def _close(self) -> bool:
        try:
            with self._db.unit_of_work():
                daily_close.close_through(self._db, self._clock)
            return True
        except Exception as exc:
            # An unreachable database is weather (one line); anything else is a bug (its traceback).
            weather = is_database_failure(exc) or isinstance(exc, LendingError)
            log.warning(
                "daily close failed; retrying in %.0f s%s",
                RETRY_S,
                f": {first_line(exc)}" if weather else "",
                exc_info=not weather,
            )
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._seconds_to_next_close() if self._close() else RETRY_S
            self._stop.wait(wait)
