"""Rate and connection limits: token-bucket arithmetic, the real server's answers per user and per peer,
and GOAWAY for clients that ping too often."""

from __future__ import annotations

import re
import sqlite3
import threading

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from helpers import call_error, health_status, running_api
from lending.v1 import auth_pb2, billing_pb2

from lending_grpc.api.rate_limits import TokenBuckets, peer_key
from lending_grpc.config import ConfigError, load_settings
from lending_grpc.server.transport import MAX_PING_STRIKES, MIN_CLIENT_PING_INTERVAL_MS


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_grants_the_burst_then_refills_at_the_rate():
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token per 0.5 s
    assert buckets.take("b") == 0.0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 100  # refills to the burst, never beyond
    assert [buckets.take("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_idle_buckets_are_evicted_and_the_table_is_bounded():
    clock = FakeClock()
    buckets = TokenBuckets(rate=1.0, burst=2, max_buckets=100, clock=clock)
    for i in range(50):
        buckets.take(f"k{i}")
    assert len(buckets) == 50
    clock.now += 2.0  # burst / rate: every bucket is full again, indistinguishable from a new one
    buckets.take("fresh")
    assert len(buckets) == 1
    for i in range(1000):  # a flood of distinct keys within the refill window
        buckets.take(f"flood{i}")
    assert len(buckets) == 100


def test_peer_key_drops_the_port():
    assert peer_key("ipv4:10.0.0.7:53211") == "ipv4:10.0.0.7"
    assert peer_key("ipv6:[::1]:53211") == "ipv6:[::1]"
    assert peer_key("unix:/run/lending.sock") == "unix:/run/lending.sock"


def test_rate_limit_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="LENDING_RATE_LIMIT_USER_PER_SECOND must be between 0"):
        load_settings(environ={"LENDING_RATE_LIMIT_USER_PER_SECOND": "-1"}, dotenv=None)
    with pytest.raises(ConfigError, match="LENDING_RATE_LIMIT_PEER_BURST must be between 1"):
        load_settings(environ={"LENDING_RATE_LIMIT_PEER_BURST": "0"}, dotenv=None)
    assert load_settings(environ={"LENDING_RATE_LIMIT_PEER_PER_SECOND": "0"}, dotenv=None)


def _details(err: grpc.RpcError):
    status = rpc_status.from_call(err)
    retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(retry) and status.details[1].Unpack(info)
    return retry, info


def _seconds(retry: error_details_pb2.RetryInfo) -> float:
    return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9


def test_defaults_let_a_client_burst_100_concurrent_calls(api, alice):
    api.billing.CreateLoan(
        billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="1000"), metadata=alice
    )
    calls = [
        api.billing.GetLoan.future(billing_pb2.GetLoanRequest(loan_id="L1"), metadata=alice)
        for _ in range(100)
    ]
    assert [call.result().loan_id for call in calls] == ["L1"] * 100


# One token per 100 s: refills cannot happen during the test, however slow the machine.
@pytest.mark.settings(rate_limit_user_per_second=0.01, rate_limit_user_burst=3, rate_limit_peer_per_second=0)
def test_user_limit_answers_resource_exhausted_with_retry_info(api, alice):
    for _ in range(3):
        call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="nope"), metadata=alice)
    err = call_error(
        api.billing.CreateLoan,
        billing_pb2.CreateLoanRequest(loan_id="L1", principal_amount="1000"),
        metadata=alice,
    )
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.fullmatch(r"too many requests from this user; retry in (99\.\d{3}|100\.000)s", err.details())
    retry, info = _details(err)
    # The bucket refilled for the few milliseconds the calls took: just under 100 s remain.
    assert 99 < _seconds(retry) <= 100
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "RATE_LIMITED",
        "lending.v1",
        {"limit": "user"},
    )
    # The refused CreateLoan stored nothing; another user has a budget of its own.
    bob, _, _ = api.register_and_login()
    err = call_error(api.billing.GetLoan, billing_pb2.GetLoanRequest(loan_id="L1"), metadata=bob)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert api.billing.ListLoans(billing_pb2.ListLoansRequest(), metadata=bob).loans == []


@pytest.mark.settings(rate_limit_peer_per_second=0.01, rate_limit_peer_burst=3)
def test_peer_limit_stops_anonymous_floods_but_never_health_or_reflection(api):
    login = auth_pb2.LoginRequest(username="nobody", password="wrong password")
    for _ in range(3):
        assert call_error(api.auth.Login, login).code() == grpc.StatusCode.UNAUTHENTICATED
    err = call_error(api.auth.Login, login)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry, info = _details(err)
    assert 99 < _seconds(retry) <= 100 and dict(info.metadata) == {"limit": "peer"}
    # Probes and tooling are never throttled.
    health = health_pb2_grpc.HealthStub(api.channel)
    for _ in range(20):
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    replies = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(replies).list_services_response.service}
    assert "lending.v1.BillingService" in names


def test_refused_register_stores_nothing(tmp_path):
    with running_api(tmp_path, rate_limit_peer_per_second=0.01, rate_limit_peer_burst=1) as api:
        stub = api.auth
        login = auth_pb2.LoginRequest(username="nobody", password="wrong password")
        call_error(stub.Login, login)
        register = auth_pb2.RegisterRequest(
            username="carol", password="correct horse battery", email="c@d.co"
        )
        assert call_error(stub.Register, register).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with sqlite3.connect(tmp_path / "lending.db") as db:
            assert db.execute("SELECT count(*) FROM user").fetchone() == (0,)


# == connection limits: ping floods get GOAWAY, and the server keeps serving =============


SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_a_client_pinging_too_often_is_sent_away_and_others_are_served(tmp_path):
    # Transport behaviour: one backend is enough.
    with running_api(tmp_path) as api:
        _ping_flood(api.server)


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
