"""Request rate limits: token buckets per peer address and per user.

Each bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; a call takes one token or is refused (RateLimited, answered
RESOURCE_EXHAUSTED with a google.rpc.RetryInfo saying when the next token
arrives). The buckets live in this process only: with N server processes a
client can get N times the configured rate.

The pipeline takes the peer's token before authentication, so anonymous
floods (password guessing, garbage bytes) are limited too, and the user's
after it, so users behind one NAT do not share a budget. Health checks and
reflection are never throttled: a probe refused for load would restart a
healthy pod.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

# Enough for a large deployment's active clients; a full table evicts the least recently used.
DEFAULT_MAX_BUCKETS = 100_000


class TokenBuckets:
    """Token buckets keyed by client, with bounded memory.

    The table is kept in least-recently-used order. A bucket untouched for
    ``burst / rate`` seconds is full again, which is exactly what a new
    bucket would be, so it is dropped without changing any answer. If the
    table still overflows ``max_buckets`` (a flood of distinct keys), the
    least recently used bucket is dropped early: that key may get a fresh
    burst, a bounded leniency that is cheaper than unbounded memory.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = float(burst)
        self._max = max_buckets
        self._clock = clock
        self._refill_s = self.burst / rate
        # key -> (tokens, time of last update)
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if granted, else the seconds until one is available."""
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)  # most recently used goes last
            self._evict(now)
            return wait

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest_key, (_tokens, last) = next(iter(buckets.items()))
            if now - last >= self._refill_s or len(buckets) > self._max:
                del buckets[oldest_key]
            else:
                break


def peer_key(peer: str) -> str:
    """The client address without its port: ``ipv4:10.0.0.7:53211`` -> ``ipv4:10.0.0.7``.

    Keyed by address, not connection, so opening more connections buys no
    more requests.
    """
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return kind + ":" + rest.partition("]")[0] + "]"
    if kind == "ipv4":
        return kind + ":" + rest.rpartition(":")[0]
    return peer  # unix sockets and the like: one key per path
