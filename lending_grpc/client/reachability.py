"""Reaching the server: connect first, and when that fails say so ("cannot reach HOST:PORT (why)").

A call to a server that cannot be reached fails with UNAVAILABLE and gRPC's
own words ("failed to connect to all addresses; last error: UNKNOWN:
ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"): the
same code a server answers with when *it* is unavailable (a database outage).
Connecting before the first call tells the two apart, and costs nothing: the
call then uses the connection.
"""

from __future__ import annotations

import queue
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lending_grpc.client.exceptions import Unavailable

UNREACHABLE_REASON = "SERVER_UNREACHABLE"
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


def wait_until_connected(channel: grpc.Channel, target: str, timeout: float) -> None:
    """Return once ``channel`` is connected to ``target``.

    Raises Unavailable ("cannot reach TARGET (connection refused)", reason
    SERVER_UNREACHABLE) when the connection fails or ``timeout`` seconds pass first.
    """
    states: queue.SimpleQueue[grpc.ChannelConnectivity] = queue.SimpleQueue()
    channel.subscribe(states.put, try_to_connect=True)
    try:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                state = states.get(timeout=remaining)
            except queue.Empty:
                break
            if state is grpc.ChannelConnectivity.READY:
                return
            if state in _FAILED:
                why = _why_not(channel)
                if why is None:  # connected after all, while we asked
                    return
                raise unreachable(target, why)
        raise unreachable(target, f"no answer within {timeout:g} s")
    finally:
        channel.unsubscribe(states.put)


def unreachable(target: str, why: str) -> Unavailable:
    """The error for a server that cannot be reached."""
    return Unavailable(
        grpc.StatusCode.UNAVAILABLE, f"cannot reach {target} ({why})", reason=UNREACHABLE_REASON
    )


def _why_not(channel: grpc.Channel) -> str | None:
    """gRPC's reason for the failed connection, from a call that fails at once; None if it went through."""
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            return None  # the server answered (UNIMPLEMENTED, say): it can be reached
        return _failure_words(err.details() or "")
    return None


# gRPC's wording of connection failures (lower case) -> ours; anything else keeps its last clause.
_KNOWN_FAILURES = (
    ("connection refused", "connection refused"),
    ("handshake failed", "TLS handshake failed"),
    ("domain name not found", "host name not found"),
    ("dns resolution failed", "host name not found"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("timed out", "connection timed out"),
)


def _failure_words(details: str) -> str:
    """A few words for gRPC's connection error, e.g. 'connection refused' or 'TLS handshake failed'."""
    lowered = details.lower()
    for words, ours in _KNOWN_FAILURES:
        if words in lowered:
            return ours
    clause = details.rsplit(": ", 1)[-1].strip(" []")
    return clause or details or "the connection failed"
