"""`serve --workers N`: N server processes sharing one port, kept alive by a small supervisor.

Python's GIL caps one process at about one core, so several processes serve
behind one port with SO_REUSEPORT, the kernel spreading connections between
them (grpc's examples/python/multiprocessing pattern). The parent prepares
everything that must happen once (signing key, migrations, the port), then
forks the workers before any gRPC object exists: gRPC's threads do not
survive a fork. Each worker opens its own database connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

from lending_grpc.addresses import is_unix_socket, parse_host_port
from lending_grpc.config import Settings, resolve_data_key, resolve_secret_key
from lending_grpc.core.plural import count
from lending_grpc.core.storage.database import close_database, open_database
from lending_grpc.server.bind_check import ListenError, bind_problem
from lending_grpc.server.build import create_server, prepare_database
from lending_grpc.server.lifecycle import (
    database_kind,
    hold_reload_signal,
    log_metrics_address,
    run_until_signalled,
    transport_kind,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
# A worker that dies this soon after starting, this many times in a row, is not
# going to get better by restarting: give up and let the supervisor above us act.
CRASH_LOOP_WINDOW_S = 10.0
CRASH_LOOP_LIMIT = 5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What the supervisor sends its workers on a second Ctrl-C. A second SIGTERM would not do: a SIGTERM
# to the process group reaches every worker twice (directly, and forwarded), and means drain once.
STOP_NOW = signal.SIGUSR1


def reserve_port(listen: str) -> tuple[socket.socket, str, int]:
    """Bind (without listening) a SO_REUSEPORT socket on ``listen``; returns it, host and port.

    Holding it keeps the port ours while workers come and go, and port 0
    becomes one concrete port that every worker then binds.
    """
    if is_unix_socket(listen):
        raise ListenError(f"cannot listen on {listen} with several workers: they share a TCP port")
    target = parse_host_port(listen, allow_port_zero=True)
    host = listen.rpartition(":")[0]
    try:
        family = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise ListenError(f"cannot listen on {listen}: cannot resolve the host {target.host!r}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((target.host, target.port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {listen}: {bind_problem(listen) or exc.strerror}") from None
    return sock, host, sock.getsockname()[1]


def _prepare(settings: Settings) -> None:
    """What must happen once, before the fork: the keys, the schema and sealing legacy emails."""
    resolve_secret_key(settings)  # generates the key file now, so every worker reads the same key
    sealer = resolve_data_key(settings)  # likewise the data key
    db = open_database(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms, pool_size=1)
    try:
        prepare_database(db, sealer, settings.time_zone)
    finally:
        close_database(db)


class WorkerError(RuntimeError):
    """A worker process could not start."""


@dataclasses.dataclass
class _Worker:
    index: int
    pid: int
    ready_fd: int
    started: float


def _worker_main(settings: Settings, ready_w: int, index: int, held_reload: threading.Event) -> int:
    """Body of a forked worker: serve until the supervisor sends SIGTERM (SIGHUP: reload the key files)."""
    # Ctrl-C reaches the whole process group (SIGINT stays ignored here): the
    # supervisor alone decides, then sends SIGTERM.
    # The index also picks this worker's metrics port (a restarted worker keeps it).
    running = create_server(settings, reuse_port=True, worker_index=index)

    def ready() -> None:
        log_metrics_address(settings, running)
        os.write(ready_w, b"R")
        os.close(ready_w)

    run_until_signalled(
        running,
        settings,
        (signal.SIGTERM,),
        on_ready=ready,
        held_reload=held_reload,
        stop_now_signals=(STOP_NOW,),
    )
    return 0


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before we asked
        os._exit(1)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_FORWARDED_SIGNALS = {*_STOP_SIGNALS, signal.SIGHUP}


def _fork_worker(settings: Settings, index: int, inherited: socket.socket, register) -> _Worker:
    """Fork a worker; ``register`` records it in the parent before any stop signal can be handled.

    Stop signals and SIGHUP are blocked across the fork: in the parent they
    would find the new worker unregistered (and never forward to it), in the
    child they would run the supervisor's handler (and signal its siblings).
    A worker that is still starting remembers a SIGHUP for when it serves.
    """
    ready_r, ready_w = os.pipe()
    parent_pid = os.getpid()
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor alone decides
            held_reload = hold_reload_signal()
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
            _die_with_parent(parent_pid)
            inherited.close()
            os.close(ready_r)
            code = 1
            try:
                code = _worker_main(settings, ready_w, index, held_reload)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(ready_w)
        worker = _Worker(index, pid, ready_r, time.monotonic())
        register(worker)
        return worker
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _how_it_ended(status: int) -> str:
    """``exited with 3`` or ``was killed by SIGKILL``, from a waitpid status."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _await_ready(worker: _Worker, timeout: float) -> bool:
    readable, _, _ = select.select([worker.ready_fd], [], [], timeout)
    ok = bool(readable) and os.read(worker.ready_fd, 1) == b"R"
    os.close(worker.ready_fd)
    return ok


class _Supervisor:
    """Starts the workers, restarts one that dies, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, count: int, port_socket: socket.socket) -> None:
        self.settings = settings  # what each worker serves with (workers=1)
        self.count = count
        self.port_socket = port_socket
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.quick_deaths = 0

    def on_signal(self, signum, _frame) -> None:
        """SIGTERM/SIGINT: every worker drains and stops; a second SIGINT (Ctrl-C) makes them stop at once."""
        if not self.stopping:
            self.stopping = True
            workers = count(len(self.workers), "worker")
            log.info("received %s: stopping %s", signal.Signals(signum).name, workers)
            self._signal_workers(signal.SIGTERM)
        elif signum == signal.SIGINT:
            log.info("received SIGINT again: workers stop now, cancelling in-flight RPCs")
            self._signal_workers(STOP_NOW)

    def on_reload_signal(self, _signum, _frame) -> None:
        """SIGHUP: every worker re-reads the key files (a worker still starting reads them anyway)."""
        log.info("received SIGHUP: %s re-read their key files", count(len(self.workers), "worker"))
        self._signal_workers(signal.SIGHUP)

    def _signal_workers(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def _register(self, worker: _Worker) -> None:
        self.workers[worker.pid] = worker

    def _start_worker(self, index: int) -> bool:
        """Fork worker ``index`` and wait until it serves; False if it did not come up."""
        worker = _fork_worker(self.settings, index, self.port_socket, self._register)
        return _await_ready(worker, READY_TIMEOUT_S)

    def start(self) -> None:
        """Start every worker; WorkerError (after stopping the others) if one does not come up."""
        for index in range(self.count):
            if self.stopping:
                return
            if not self._start_worker(index) and not self.stopping:
                self.stopping = True
                self._signal_workers(signal.SIGTERM)
                raise WorkerError(f"worker {index} did not start (see its log above)")

    def _restart(self, index: int, died_at: float) -> bool:
        """Restart worker ``index``, backing off while it cannot start; False once it is hopeless."""
        for attempt in range(CRASH_LOOP_LIMIT):
            if self.stopping:
                return True
            if self._start_worker(index):
                pid = next(w.pid for w in self.workers.values() if w.index == index)
                log.info(
                    "worker %d restarted (pid %d), serving %.2f s after the old one died",
                    index,
                    pid,
                    time.monotonic() - died_at,
                )
                return True
            delay = min(2.0**attempt, 10.0)
            log.error("worker %d did not start; retrying in %.0f s", index, delay)
            time.sleep(delay)
        return False

    def run(self) -> int:
        """Reap workers until all are gone; returns the exit code."""
        code = 0
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            died_at = time.monotonic()
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                code = code or max(exit_code, 0)
                continue
            ended = _how_it_ended(status)
            quick = died_at - worker.started < CRASH_LOOP_WINDOW_S
            self.quick_deaths = self.quick_deaths + 1 if quick else 0
            hopeless = self.quick_deaths >= CRASH_LOOP_LIMIT
            log.error(
                "worker %d (pid %d) %s%s", worker.index, pid, ended, "" if hopeless else "; restarting it"
            )
            if hopeless:
                reason = (
                    f"{self.quick_deaths} workers in a row died within {CRASH_LOOP_WINDOW_S:.0f} s "
                    f"of starting (the last one {ended})"
                )
            elif not self._restart(worker.index, died_at):
                reason = f"worker {worker.index} could not be started again after {CRASH_LOOP_LIMIT} attempts"
            else:
                continue
            log.error("workers keep dying: %s; stopping every worker, exit code 1", reason)
            self.stopping = True
            self._signal_workers(signal.SIGTERM)
            code = 1
        return code


def serve_workers(settings: Settings) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT; exits non-zero if they fail.

    SIGHUP goes on to every worker, which re-reads the key files.
    """
    # A SIGHUP before the workers exist changes nothing: they read the key files as they start.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sock, host, port = reserve_port(settings.listen)  # before _prepare creates files: a busy port fails first
    try:
        _prepare(settings)
    except BaseException:
        sock.close()
        raise
    worker_settings = dataclasses.replace(settings, listen=f"{host}:{port}", workers=1)
    supervisor = _Supervisor(worker_settings, settings.workers, sock)
    for signum in _STOP_SIGNALS:
        signal.signal(signum, supervisor.on_signal)
    signal.signal(signal.SIGHUP, supervisor.on_reload_signal)
    try:
        supervisor.start()
        if not supervisor.stopping:
            log.info(
                "lending-grpc serving on %s:%d (database %s, %s, %d workers, pids %s)",
                host,
                port,
                database_kind(settings),
                transport_kind(settings),
                settings.workers,
                " ".join(str(pid) for pid in supervisor.workers),
            )
        code = supervisor.run()
    except WorkerError as exc:
        log.error("%s", exc)
        supervisor.run()  # reap the workers that did start; they are stopping
        code = 1
    finally:
        sock.close()
    log.info("lending-grpc stopped")
    if code:
        sys.exit(code)
