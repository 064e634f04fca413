"""Builds the gRPC server: servicers, interceptors, health and reflection.

`create_server` returns a started server and its bound port, so tests can
serve on 127.0.0.1:0; `serve` adds signal handling and graceful draining.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from lending.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
)
from prometheus_client import CollectorRegistry

from lending_grpc.api.audit_servicer import AuditServicer
from lending_grpc.api.auth_servicer import AuthServicer
from lending_grpc.api.billing_servicer import BillingServicer
from lending_grpc.api.event_servicer import EventServicer
from lending_grpc.api.metrics import MetricsServer, PortfolioCollector, RpcMetrics, worker_address
from lending_grpc.api.pipeline import Pipeline
from lending_grpc.api.rate_limits import TokenBuckets
from lending_grpc.config import ConfigError, Settings, resolve_data_key, resolve_secret_keys
from lending_grpc.core.admin import seal_legacy_emails
from lending_grpc.core.audit import AuditLog
from lending_grpc.core.auth import AuthCore
from lending_grpc.core.billing import BillingCore
from lending_grpc.core.clock import Clock
from lending_grpc.core.crypto import Sealer
from lending_grpc.core.delinquency import DelinquencyCore
from lending_grpc.core.event_hub import EventHub
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.passwords import Passwords
from lending_grpc.core.plural import count
from lending_grpc.core.portfolio_stats import funding_quality_figures, portfolio_figures
from lending_grpc.core.storage.database import LendingDatabase, close_database, open_database
from lending_grpc.core.storage.migrations import migrate
from lending_grpc.core.throttle import LoginPolicy
from lending_grpc.core.tokens import TokenSigner
from lending_grpc.server.bind_check import ListenError, bind_problem
from lending_grpc.server.daily_close_scheduler import DailyCloseScheduler
from lending_grpc.server.keys import KeyReloader, describe_data_keys, describe_jwt_keys
from lending_grpc.server.transport import server_credentials, server_options
from lending_grpc.server.watchdog import DatabaseWatchdog

if TYPE_CHECKING:  # imported at run time only when a DSN is set: it loads sentry_sdk
    from lending_grpc.server.error_tracking import ErrorTracker

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    billing_pb2.DESCRIPTOR.services_by_name["BillingService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
)
# A health name for liveness probes: SERVING while the process serves, whatever the database
# does (restarting every process because the database is away would only delay the recovery).
LIVENESS = "liveness"


@dataclasses.dataclass
class RunningServer:
    """A started server with what its owner needs to stop it."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    database: LendingDatabase
    executor: futures.ThreadPoolExecutor
    events: EventHub
    metrics: MetricsServer | None = None
    daily_close: DailyCloseScheduler | None = None
    keys: KeyReloader | None = None  # `keys.request()` re-reads the key files (SIGHUP)
    error_tracker: ErrorTracker | None = None  # when LENDING_SENTRY_DSN is set
    watchdog: DatabaseWatchdog | None = None

    def stop(
        self, grace: float | None = None, drain_delay: float = 0.0, hurry: threading.Event | None = None
    ) -> None:
        """Report NOT_SERVING, wait ``drain_delay`` so balancers notice, then stop.

        In-flight RPCs get ``grace`` seconds to finish. Setting ``hurry`` (a
        second Ctrl-C) cuts both waits short. The worker threads are joined
        before the database closes, so no handler outlives its database.
        """
        hurry = hurry or threading.Event()
        if self.watchdog is not None:
            self.watchdog.stop()  # it must not report SERVING again during the drain
        self.health.enter_graceful_shutdown()
        if drain_delay > 0:
            hurry.wait(drain_delay)
        if self.daily_close is not None:
            self.daily_close.stop()
        self.events.stop()  # watchers end their streams with UNAVAILABLE, to resume elsewhere
        self.server.stop(0 if hurry.is_set() else grace).wait()
        self.executor.shutdown(wait=True)
        if self.metrics is not None:
            self.metrics.stop()
        if self.keys is not None:
            self.keys.stop()
        if self.error_tracker is not None:
            self.error_tracker.close()  # errors of the last calls still reach Sentry
        close_database(self.database)


def prepare_database(db: LendingDatabase, sealer: Sealer, time_zone: str) -> None:
    """Apply pending migrations, then seal emails left in plaintext or under an older data key.

    Safe to run from several processes at once (both take locks), and cheap
    once done: `serve --workers` runs it in the parent before forking, and
    every worker's create_server checks again.
    """
    migrate(db, time_zone)
    sealed = seal_legacy_emails(db, sealer)
    if sealed:
        log.info("sealed %s: plaintext from schema version 1 or an older data key", count(sealed, "email"))


def create_server(settings: Settings, *, reuse_port: bool = False, worker_index: int = 0) -> RunningServer:
    """Open and migrate the database, build the server, bind ``settings.listen`` and start it.

    ``reuse_port`` lets several worker processes bind the same port (SO_REUSEPORT);
    ``worker_index`` (0 for a single process) picks the worker's metrics port.
    """
    keys = resolve_secret_keys(settings)
    sealer = resolve_data_key(settings)
    db = open_database(
        settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms, pool_size=settings.db_pool_size
    )
    try:
        prepare_database(db, sealer, settings.time_zone)
        db.release_connection()  # the main thread serves no RPC: leave its connection to the pool
        return _start(settings, keys, sealer, db, reuse_port, worker_index)
    except BaseException:
        close_database(db)
        raise


def _start(
    settings: Settings,
    keys: tuple[bytes, ...],
    sealer: Sealer,
    db: LendingDatabase,
    reuse_port: bool,
    worker_index: int,
) -> RunningServer:
    clock = Clock(settings.time_zone)
    signer = TokenSigner(
        keys,
        access_ttl_s=settings.access_token_ttl_seconds,
        refresh_ttl_s=settings.refresh_token_ttl_seconds,
    )
    if worker_index == 0:
        log.info(
            "JWT keys: %s; data keys: %s",
            describe_jwt_keys(signer.key_ids),
            describe_data_keys(sealer.versions),
        )
    if settings.insecure_fast_password_hash:
        log.warning("LENDING_INSECURE_FAST_PASSWORD_HASH is on: password hashes are weak (tests only)")
    policy = LoginPolicy(
        max_failures=settings.login_max_failures,
        window_s=settings.login_failure_window_seconds,
        lockout_s=settings.login_lockout_seconds,
        lockout_max_s=settings.login_lockout_max_seconds,
    )
    registry = CollectorRegistry(auto_describe=True)
    metrics = RpcMetrics(registry)
    db.add_failure_listener(metrics.storage_error)
    auth = AuthCore(
        db,
        clock,
        Passwords(fast_insecure=settings.insecure_fast_password_hash),
        signer,
        sealer,
        policy=policy,
        cache_s=settings.auth_cache_seconds,
        on_lockout=metrics.lockout,
    )
    page_tokens = PageTokens(*keys)
    events = EventHub(db)
    billing = BillingCore(db, clock, page_tokens, on_events=events.committed)
    delinquency = DelinquencyCore(db, clock, page_tokens, billing)
    reloader = KeyReloader(settings, signer=signer, page_tokens=page_tokens, sealer=sealer, db=db)
    tracker = None
    if settings.sentry_dsn:  # sentry_sdk is imported only then
        try:
            from lending_grpc.server.error_tracking import ErrorTracker
        except ImportError:
            raise ConfigError(
                "LENDING_SENTRY_DSN is set but sentry-sdk is not installed: "
                "pip install 'lending-grpc[sentry]'"
            ) from None
        tracker = ErrorTracker(settings, worker_index=worker_index)

    executor = futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc")
    server = grpc.server(
        executor,
        interceptors=[_pipeline(settings, db, auth, metrics, tracker)],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        options=server_options(settings, reuse_port=reuse_port),
    )
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    billing_pb2_grpc.add_BillingServiceServicer_to_server(BillingServicer(billing, delinquency, auth), server)
    events_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(db, events), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(AuditLog(page_tokens), auth), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection_names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(reflection_names, server)
    server.add_generic_rpc_handlers((_reflection_v1(reflection_names),))
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:
        # Checked before start-up (bind_check.py), but another process may have taken it since.
        problem = bind_problem(settings.listen) or "gRPC refused it (GRPC_VERBOSITY=debug says why)"
        raise ListenError(f"cannot listen on {settings.listen}: {problem}") from None
    metrics_server = None
    if settings.metrics_listen:
        if worker_index == 0:  # portfolio counts once, not once per worker process
            registry.register(
                PortfolioCollector(
                    lambda: portfolio_figures(db, clock.today(), clock.now_us()),
                    lambda: funding_quality_figures(db, clock.today()),
                )
            )
        address = worker_address(settings.metrics_listen, worker_index)
        try:
            metrics_server = MetricsServer(address, registry)
        except OSError as exc:
            problem = bind_problem(address) or exc.strerror
            raise ListenError(f"cannot serve metrics on {address}: {problem}") from None
    events.start()
    scheduler = DailyCloseScheduler(db, clock) if settings.daily_close else None
    if scheduler is not None:
        scheduler.start()
    server.start()
    reloader.start()
    # The database is open and migrated: ready. From now on health follows the database.
    health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    _set_serving(health_servicer, True)
    watchdog = DatabaseWatchdog(
        db, lambda reachable: _database_reachable(health_servicer, metrics, reachable)
    )
    db.add_failure_listener(watchdog.notice)
    watchdog.start()
    return RunningServer(
        server,
        port,
        health_servicer,
        db,
        executor,
        events,
        metrics_server,
        daily_close=scheduler,
        keys=reloader,
        error_tracker=tracker,
        watchdog=watchdog,
    )


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _reflection_v1(names: tuple[str, ...]) -> grpc.GenericRpcHandler:
    """Server reflection under its stable name, for clients that ask only ``grpc.reflection.v1``.

    grpcio-reflection serves ``v1alpha`` alone. The v1 service has the same
    messages, field for field, in a new package, so the v1alpha servicer
    answers v1 calls as they are; only the method path differs. (It is not
    listed: its descriptor is not in the pool for ``describe``.)
    """
    servicer = reflection.ReflectionServicer(names)
    return grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )


def _set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, status)


def _database_reachable(health_servicer: health.HealthServicer, metrics: RpcMetrics, reachable: bool) -> None:
    """The watchdog's verdict: balancers stop (or resume) sending calls, the gauge follows."""
    _set_serving(health_servicer, reachable)
    metrics.database_reachable(reachable)


def _pipeline(
    settings: Settings,
    db: LendingDatabase,
    auth: AuthCore,
    metrics: RpcMetrics,
    tracker: ErrorTracker | None = None,
) -> Pipeline:
    """The one interceptor (``api/pipeline.py``); a rate of 0 turns that limit off."""
    peer_limit = user_limit = None
    if settings.rate_limit_peer_per_second > 0:
        peer_limit = TokenBuckets(settings.rate_limit_peer_per_second, settings.rate_limit_peer_burst)
    if settings.rate_limit_user_per_second > 0:
        user_limit = TokenBuckets(settings.rate_limit_user_per_second, settings.rate_limit_user_burst)
    return Pipeline(
        auth=auth,
        database=db,
        metrics=metrics,
        peer_limit=peer_limit,
        user_limit=user_limit,
        on_internal_error=tracker,
    )
