"""Connection limits of the real server: ping floods get GOAWAY, and the server keeps serving."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2
from helpers import health_status, make_settings

from lending_grpc.server import create_server
from lending_grpc.server.transport import MAX_PING_STRIKES, MIN_CLIENT_PING_INTERVAL_MS

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_a_client_pinging_too_often_is_sent_away_and_others_are_served(tmp_path):
    # Transport behaviour: one backend is enough.
    server = create_server(make_settings(tmp_path))
    try:
        _ping_flood(server)
    finally:
        server.stop(0)


def _ping_flood(server) -> None:
    assert MIN_CLIENT_PING_INTERVAL_MS == 10_000 and MAX_PING_STRIKES == 2
    # Pings every 200 ms with no calls: each one after the first is a strike.
    flooding = grpc.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[
            ("grpc.keepalive_time_ms", 200),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    was_ready, dropped = threading.Event(), threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state is grpc.ChannelConnectivity.READY:
            was_ready.set()
        elif was_ready.is_set() and state is not grpc.ChannelConnectivity.READY:
            dropped.set()  # GOAWAY (ENHANCE_YOUR_CALM, "too_many_pings") closed the connection

    flooding.subscribe(watch, try_to_connect=True)
    try:
        assert health_status(flooding) == SERVING
        assert dropped.wait(30), "the server never sent the ping-flooding client away"
    finally:
        flooding.unsubscribe(watch)
        flooding.close()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as polite:
        assert health_status(polite) == SERVING
