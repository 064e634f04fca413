"""Health follows the database: NOT_SERVING while it cannot be reached, SERVING again once it answers.

A load balancer that asks the health service stops sending calls to a
process whose database is gone, and sends them again as soon as it is back.
The check is not made per health call (probes come every few seconds from
every balancer): a thread probes the database every ``interval_s``, at once
when a call found it unreachable, and every ``retry_s`` while it stays
unreachable, so the service reports SERVING again within ``retry_s`` plus
one connection set-up of the database's return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lending_grpc.core.storage.database import UNREACHABLE, LendingDatabase

log = logging.getLogger("lending_grpc.server")

INTERVAL_S = 5.0
RETRY_S = 0.2
PROBE_TIMEOUT_S = 2.0


class DatabaseWatchdog:
    """Probes the database and calls ``on_change(reachable)`` when the answer changes.

    ``notice`` is the database's failure listener: an unreachable database
    seen by a call triggers a probe at once (a single dropped connection
    does not flip anything: the probe reconnects and finds the server).
    """

    def __init__(
        self,
        db: LendingDatabase,
        on_change: Callable[[bool], None],
        *,
        interval_s: float = INTERVAL_S,
        retry_s: float = RETRY_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self._db = db
        self._on_change = on_change
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._probe_timeout_s = probe_timeout_s
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="database-watchdog", daemon=True)
        self.reachable = True
        self._lost_at = 0.0

    def start(self) -> None:
        """Start probing in a thread of its own."""
        self._thread.start()

    def stop(self) -> None:
        """Stop probing (before the server drains: nothing may report SERVING after that)."""
        self._stopped.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self._probe_timeout_s + 5)

    def notice(self, kind: str) -> None:
        """The database's failure listener: a call found it unreachable, so probe now."""
        if kind == UNREACHABLE:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self._interval_s if self.reachable else self._retry_s)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                reachable = self._db.check_reachable(self._probe_timeout_s)
            except Exception:  # a bug in the probe must not end the watch
                log.exception("the database watchdog's probe failed")
                continue
            if reachable != self.reachable and not self._stopped.is_set():
                self._changed(reachable)

    def _changed(self, reachable: bool) -> None:
        self.reachable = reachable
        if reachable:
            log.info(
                "database reachable again after %.1f s: health SERVING",
                time.monotonic() - self._lost_at,
            )
        else:
            self._lost_at = time.monotonic()
            log.warning(
                "database unreachable: health NOT_SERVING until it answers again (probing every %.1f s)",
                self._retry_s,
            )
        self._on_change(reachable)
