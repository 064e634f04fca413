"""`lending-grpc serve`: one process, or a supervisor of several (`--workers N`)."""

from __future__ import annotations

import logging
import signal

from lending_grpc.config import Settings
from lending_grpc.server.bind_check import check_server_addresses
from lending_grpc.server.build import create_server
from lending_grpc.server.lifecycle import (
    database_kind,
    hold_reload_signal,
    log_metrics_address,
    run_until_signalled,
    transport_kind,
)
from lending_grpc.server.workers import serve_workers

log = logging.getLogger("lending_grpc.server")


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully; ``settings.workers`` > 1 forks processes.

    SIGHUP re-reads the key files without a restart (a supervisor passes it on to its workers).
    An address that cannot be bound is refused (ListenError) before any file is created.
    """
    check_server_addresses(settings)
    if settings.workers > 1:
        serve_workers(settings)
        return
    held_reload = hold_reload_signal()
    running = create_server(settings)
    host = settings.listen.rsplit(":", 1)[0]

    def ready() -> None:
        log_metrics_address(settings, running)
        log.info(
            "lending-grpc serving on %s:%d (database %s, %s)",
            host,
            running.port,
            database_kind(settings),
            transport_kind(settings),
        )

    run_until_signalled(
        running, settings, (signal.SIGTERM, signal.SIGINT), on_ready=ready, held_reload=held_reload
    )
