"""Per-peer and per-user request rate limits (token buckets) answering RESOURCE_EXHAUSTED.

Each bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; a call takes one token or is refused with a google.rpc.RetryInfo
saying when the next token arrives. The buckets live in this process only:
with N server processes a client can get N times the configured rate.

The peer limit runs before authentication, so anonymous floods (password
guessing, garbage bytes) are limited too; the user limit runs after it,
keyed on the authenticated user, so users behind one NAT do not share a
budget. Health checks and reflection are never throttled: a probe refused
for load would restart a healthy pod.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from lending_grpc.api import context as call_context
from lending_grpc.api.errors import ERROR_DOMAIN
from lending_grpc.api.handlers import Behaviour, WrappingInterceptor, wrap_unary

LIMITED_PREFIX = "/lending.v1."
REASON = "RATE_LIMITED"
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


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def exhausted_status(scope: str, wait_s: float) -> grpc.Status:
    """RESOURCE_EXHAUSTED with RetryInfo (when to retry) and ErrorInfo (reason RATE_LIMITED)."""
    # Round up to whole milliseconds: retrying at the advised moment must succeed.
    wait_ms = max(1, int(wait_s * 1000 + 0.999))
    delay = duration_pb2.Duration(seconds=wait_ms // 1000, nanos=(wait_ms % 1000) * 1_000_000)
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message=f"too many requests from this {scope}; retry in {wait_ms / 1000:.3f}s",
        details=[
            _packed(error_details_pb2.RetryInfo(retry_delay=delay)),
            _packed(
                error_details_pb2.ErrorInfo(reason=REASON, domain=ERROR_DOMAIN, metadata={"limit": scope})
            ),
        ],
    )
    return rpc_status.to_status(status)


class _RateLimitInterceptor(WrappingInterceptor):
    """Takes a token from the caller's bucket before each lending.v1 call; refuses when it is empty."""

    scope = ""

    def __init__(self, buckets: TokenBuckets) -> None:
        super().__init__()
        self._buckets = buckets

    def caller(self, context: grpc.ServicerContext) -> str | None:
        """The bucket key of this call's caller, or None to let it through unmetered."""
        raise NotImplementedError

    def wrap_handler(self, handler, method):
        if not method.startswith(LIMITED_PREFIX):
            return handler
        buckets, caller, scope = self._buckets, self.caller, self.scope

        def wrap(behaviour: Behaviour) -> Behaviour:
            def limited(request: Any, context: grpc.ServicerContext) -> Any:
                key = caller(context)
                if key is not None:
                    wait = buckets.take(key)
                    if wait:
                        context.abort_with_status(exhausted_status(scope, wait))
                return behaviour(request, context)

            return limited

        return wrap_unary(handler, wrap)


class PeerRateLimitInterceptor(_RateLimitInterceptor):
    """Limits every lending.v1 call per client IP address, authenticated or not."""

    scope = "peer"

    def caller(self, context: grpc.ServicerContext) -> str | None:
        return peer_key(call_context.peer_of(context))


class UserRateLimitInterceptor(_RateLimitInterceptor):
    """Limits each authenticated user; sits inside the auth interceptor, which names the user."""

    scope = "user"

    def caller(self, context: grpc.ServicerContext) -> str | None:
        principal = call_context.current_principal.get(None)
        return None if principal is None else principal.user_id
