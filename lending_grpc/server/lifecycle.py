"""Running a built server until a signal: the ready line, draining and stopping.

Shared by a single-process server (`serve.py`) and each worker process
(`workers.py`); knows nothing about how many processes there are.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from lending_grpc.config import Settings
from lending_grpc.server.build import RunningServer
from lending_grpc.server.signal_thread import handle_signals_on_a_thread

log = logging.getLogger("lending_grpc.server")


def transport_kind(settings: Settings) -> str:
    """How calls arrive, for the startup line: "plaintext", "TLS" or "mTLS"."""
    if not settings.tls_cert:
        return "plaintext"
    return "mTLS" if settings.tls_client_ca else "TLS"


def log_metrics_address(settings: Settings, running: RunningServer) -> None:
    """Say where this process serves /metrics, if it does."""
    if running.metrics is not None:
        host = settings.metrics_listen.rpartition(":")[0]
        log.info("metrics on http://%s:%d/metrics", host, running.metrics.port)


def database_kind(settings: Settings) -> str:
    """The backend's name for logs ("sqlite", "postgresql"), never the URL with its password."""
    return settings.database_url.split("://", 1)[0]


def hold_reload_signal() -> threading.Event:
    """Until `run_until_signalled` takes over, remember a SIGHUP instead of dying of it.

    Call it first thing in a process that will serve: a SIGHUP sent while the
    server is starting (an agent that has just rendered a key file, say) is
    then acted on as soon as it serves, instead of terminating the process.
    """
    held = threading.Event()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: held.set())
    return held


def run_until_signalled(
    running: RunningServer,
    settings: Settings,
    signals: tuple[signal.Signals, ...],
    on_ready: Callable[[], None],
    held_reload: threading.Event | None = None,
    stop_now_signals: tuple[signal.Signals, ...] = (signal.SIGINT,),
) -> None:
    """Wait for one of ``signals``, then drain and stop.

    While draining, a signal of ``stop_now_signals`` (a second Ctrl-C) stops at
    once, cancelling in-flight RPCs; one that is not also in ``signals`` does so
    even when it comes first. Asking again with SIGTERM changes nothing: `make
    run`, like other supervisors, forwards the SIGTERM its process group has
    already delivered, and orchestrators follow SIGTERM with SIGKILL, not a
    second SIGTERM. SIGHUP re-reads the key files (``keys.py``), also one
    ``held_reload`` noted before. ``on_ready`` runs once the handlers are
    installed: whoever it tells that we are serving may stop us at once.
    """
    stop = threading.Event()
    hurry = threading.Event()

    def on_signal(signum: signal.Signals) -> None:  # on the thread 'signals', one at a time
        if signum == signal.SIGHUP:
            if running.keys is not None:
                running.keys.request()  # only wakes the reloader's thread
        elif not stop.is_set() and signum in signals:
            log.info(
                "received %s: draining (health NOT_SERVING for %.1fs, then grace %.0fs)",
                signum.name,
                settings.drain_delay_seconds,
                settings.shutdown_grace_seconds,
            )
            stop.set()
        elif signum in stop_now_signals and not hurry.is_set():
            again = " again" if stop.is_set() else ""
            log.info("received %s%s: stopping now, cancelling in-flight RPCs", signum.name, again)
            hurry.set()
            stop.set()
            running.server.stop(0)
        else:
            log.debug("received %s again: already draining", signum.name)

    handle_signals_on_a_thread({*signals, *stop_now_signals, signal.SIGHUP}, on_signal)
    if held_reload is not None and held_reload.is_set():
        on_signal(signal.SIGHUP)
    on_ready()
    stop.wait()
    running.stop(settings.shutdown_grace_seconds, settings.drain_delay_seconds, hurry)
    log.info("lending-grpc stopped")
