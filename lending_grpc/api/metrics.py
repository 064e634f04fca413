"""Prometheus metrics: go-grpc-prometheus RPC series plus portfolio counts, on their own HTTP port.

The RPC series keep go-grpc-prometheus's names and labels
(`grpc_server_started_total`, `grpc_server_handled_total`,
`grpc_server_handling_seconds`), so existing gRPC dashboards work unchanged.
They are recorded by the request pipeline, which already knows each
call's final code. The portfolio gauges are computed only when Prometheus
scrapes (``core/portfolio_stats.py``), never on the RPC path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lending_grpc.core.storage.database import is_database_failure

log = logging.getLogger(__name__)

# go-grpc-prometheus uses Prometheus' default buckets for the handling-time histogram.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RpcMetrics:
    """The go-grpc-prometheus server series and the service's own counters, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self._started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        self._lockouts = Counter(
            "lending_login_lockouts",
            "Accounts locked by too many failed sign-ins (lockouts started in this process).",
            registry=registry,
        )

        self._storage_errors = Counter(
            "lending_storage_errors",
            "Calls the database refused for want of room (kind disk_full, out_of_memory, "
            "out_of_connections, resources) or that found it unreachable (kind unreachable).",
            ("kind",),
            registry=registry,
        )
        self._reachable = Gauge(
            "lending_database_reachable",
            "1 while this process reaches its database, 0 while health says NOT_SERVING because it cannot.",
            registry=registry,
        )
        self._reachable.set(1)

    def lockout(self) -> None:
        """Count a lockout that failed sign-ins just started."""
        self._lockouts.inc()

    def storage_error(self, kind: str) -> None:
        """Count a call that met a database failure of ``kind`` (the database's failure listener)."""
        self._storage_errors.labels(kind).inc()

    def database_reachable(self, reachable: bool) -> None:
        """Record the database watchdog's verdict."""
        self._reachable.set(1 if reachable else 0)

    def for_method(self, service: str, method: str, streaming: bool = False) -> MethodMetrics:
        """The series of one method, resolved once (a label lookup per call costs more than the count).

        ``streaming`` marks a server-streaming method (grpc_type ``server_stream``).
        """
        kind = "server_stream" if streaming else "unary"
        return MethodMetrics(
            self._started.labels(kind, service, method),
            self._seconds.labels(kind, service, method),
            lambda code: self._handled.labels(kind, service, method, _code_name(code)),
        )


class MethodMetrics:
    """One method's started, handled and latency series."""

    def __init__(self, started: Counter, seconds: Histogram, handled_by_code: Callable) -> None:
        self._started = started
        self._seconds = seconds
        self._handled_by_code = handled_by_code
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def started(self) -> None:
        """Count a call that reached its handler."""
        self._started.inc()

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        """Count a finished call by its final status code and record how long it took."""
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._handled_by_code(code)
        handled.inc()
        self._seconds.observe(seconds)


def _code_name(code: grpc.StatusCode) -> str:
    """The code as Go spells it, like go-grpc-prometheus: OK, NotFound, ResourceExhausted, Canceled."""
    if code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(part.capitalize() for part in code.name.split("_"))


class PortfolioCollector(Collector):
    """The book's gauges (``core/portfolio_stats.py``), computed when Prometheus scrapes.

    ``cheap`` figures (indexed counts) are read at every scrape; ``costly``
    ones (the funding-quality report scans the book) at most once per
    ``costly_every_s`` seconds, the last value served in between.
    """

    def __init__(
        self,
        cheap: Callable[[], dict[str, tuple[str, float]]],
        costly: Callable[[], dict[str, tuple[str, float]]] | None = None,
        costly_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cheap = cheap
        self._costly = costly
        self._costly_every_s = costly_every_s
        self._clock = clock
        self._costly_cache: tuple[float, dict[str, tuple[str, float]]] | None = None

    def _costly_figures(self) -> dict[str, tuple[str, float]]:
        if self._costly is None:
            return {}
        now = self._clock()
        if self._costly_cache is None or now - self._costly_cache[0] >= self._costly_every_s:
            self._costly_cache = (now, self._costly())
        return self._costly_cache[1]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            figures = {**self._cheap(), **self._costly_figures()}
        except Exception as exc:
            # A scrape must not fail because the database is briefly unavailable; the gap shows.
            # That is weather, worth one line; anything else is a bug, worth its traceback.
            if is_database_failure(exc):
                reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                log.warning("metrics: could not read the portfolio figures: %s", reason)
            else:
                log.warning("metrics: could not read the portfolio figures", exc_info=True)
            return
        for name, (help_text, value) in figures.items():
            yield GaugeMetricFamily(name, help_text, value=value)


def worker_address(listen: str, worker_index: int) -> str:
    """The metrics address of worker ``worker_index``: the configured port plus the index.

    Worker processes share the gRPC port, but an HTTP port cannot be shared
    meaningfully (a scrape would reach one process at random), so each worker
    gets its own: 9090, 9091, ... Port 0 stays 0 (any free port).
    """
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + worker_index if int(port) else 0}"


class MetricsServer:
    """The /metrics HTTP endpoint; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, _, port = listen.rpartition(":")
        self._httpd, self._thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        self.port: int = self._httpd.server_address[1]

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
