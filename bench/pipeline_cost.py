"""The request pipeline's own cost per call, in process: a bare handler with and without it.

    python -m bench.pipeline_cost

Calls a trivial handler directly, then through `api.pipeline.Pipeline` as
the server builds it (authentication of a real access token from its cache,
both rate limits, the unit of work on a real SQLite database, metrics and
the access-log line written to a file), with a stand-in ServicerContext.
The difference is what every RPC pays for the pipeline, beside grpcio's and
the handler's own work. Prints one JSON line; `make bench` puts it in its
report.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "generated"))

import grpc  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from lending_grpc.api.metrics import RpcMetrics  # noqa: E402
from lending_grpc.api.pipeline import Pipeline  # noqa: E402
from lending_grpc.api.rate_limits import TokenBuckets  # noqa: E402
from lending_grpc.core.auth import AuthCore  # noqa: E402
from lending_grpc.core.clock import Clock  # noqa: E402
from lending_grpc.core.crypto import Sealer, new_key_text  # noqa: E402
from lending_grpc.core.passwords import Passwords  # noqa: E402
from lending_grpc.core.storage.database import close_database, open_database  # noqa: E402
from lending_grpc.core.storage.migrations import migrate  # noqa: E402
from lending_grpc.core.tokens import TokenSigner  # noqa: E402
from lending_grpc.core.views import Actor  # noqa: E402
from lending_grpc.logs import configure_logging  # noqa: E402

METHOD = "/lending.v1.BillingService/GetOutstanding"


class _Context:
    """Just what the pipeline asks of grpcio's ServicerContext, answered at no cost."""

    def __init__(self, metadata: tuple) -> None:
        self._metadata = metadata

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def send_initial_metadata(self, metadata) -> None:
        pass

    def code(self):
        return None

    def is_active(self) -> bool:
        return True

    def time_remaining(self):
        return None

    def abort_with_status(self, status):
        raise RuntimeError(status.details)


def _time(call, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def measure(calls: int = 20_000) -> dict:
    """Microseconds per call: the bare handler, the handler through the pipeline, and the difference."""
    work = Path(tempfile.mkdtemp())
    configure_logging("INFO", "text")
    # The access log goes to a file, as a server's stderr would.
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(work / "access.log", "w"))  # noqa: SIM115
    db = open_database(f"sqlite:///{work / 'pipeline.db'}")
    try:
        migrate(db)
        clock = Clock()
        auth = AuthCore(
            db, clock, Passwords(fast_insecure=True), TokenSigner(b"k" * 32), Sealer.from_text(new_key_text())
        )
        auth.register(Actor(), "bench-user", "correct horse battery", "bench@example.com")
        token = auth.login(Actor(), "bench-user", "correct horse battery").access_token
        pipeline = Pipeline(
            auth=auth,
            database=db,
            metrics=RpcMetrics(CollectorRegistry()),
            peer_limit=TokenBuckets(1e9, 10**9),
            user_limit=TokenBuckets(1e9, 10**9),
        )
        response = object()

        def bare(request, context):
            return response

        handler = pipeline.intercept_service(
            lambda details: grpc.unary_unary_rpc_method_handler(bare),
            type("Details", (), {"method": METHOD, "invocation_metadata": ()})(),
        )
        context = _Context((("authorization", f"Bearer {token}"), ("user-agent", "bench")))
        wrapped = handler.unary_unary
        for _ in range(2000):  # warm: token cache, session cache, metric children
            wrapped(b"", context)
        bare_us = min(_time(lambda: bare(b"", context), calls) for _ in range(3))
        piped_us = min(_time(lambda: wrapped(b"", context), calls) for _ in range(3))
    finally:
        close_database(db)
    return {"calls": calls, "bare_us": bare_us, "pipeline_us": piped_us, "cost_us": piped_us - bare_us}


if __name__ == "__main__":
    print(json.dumps(measure()))
