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
import time

from lending_grpc.config import Settings, resolve_data_key, resolve_secret_key
from lending_grpc.core.admin import seal_legacy_emails
from lending_grpc.core.database import close_database, open_database
from lending_grpc.core.migrations import migrate

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
# A worker that dies this soon after starting, this many times in a row, is not
# going to get better by restarting: give up and let the supervisor above us act.
CRASH_LOOP_WINDOW_S = 10.0
CRASH_LOOP_LIMIT = 5
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def reserve_port(listen: str) -> tuple[socket.socket, str, int]:
    """Bind (without listening) a SO_REUSEPORT socket on ``listen``; returns it, host and port.

    Holding it keeps the port ours while workers come and go, and port 0
    becomes one concrete port that every worker then binds.
    """
    from lending_grpc.server import ListenError

    host, _, port_text = listen.rpartition(":")
    bare_host = host.strip("[]")
    try:
        port = int(port_text)
        family = socket.getaddrinfo(bare_host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (ValueError, OSError):
        raise ListenError(f"cannot listen on {listen}: malformed address") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bare_host, port))
    except OSError:
        sock.close()
        raise ListenError(f"cannot listen on {listen}: already in use") from None
    return sock, host, sock.getsockname()[1]


def _prepare(settings: Settings) -> None:
    """What must happen once, before the fork: the keys, the schema and sealing legacy emails."""
    resolve_secret_key(settings)  # generates the key file now, so every worker reads the same key
    sealer = resolve_data_key(settings)  # likewise the data key
    db = open_database(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms, pool_size=1)
    try:
        migrate(db)
        seal_legacy_emails(db, sealer)
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


def _worker_main(settings: Settings, ready_w: int) -> int:
    """Body of a forked worker: serve until the supervisor sends SIGTERM."""
    from lending_grpc.server import create_server, run_until_signalled

    # Ctrl-C reaches the whole process group (SIGINT stays ignored here): the
    # supervisor alone decides, then sends SIGTERM.
    running = create_server(settings, reuse_port=True)

    def ready() -> None:
        os.write(ready_w, b"R")
        os.close(ready_w)

    run_until_signalled(running, settings, (signal.SIGTERM,), on_ready=ready)
    return 0


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before we asked
        os._exit(1)


def _fork_worker(settings: Settings, index: int) -> _Worker:
    ready_r, ready_w = os.pipe()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        # Drop the supervisor's handlers at once: they would signal the other workers.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(parent_pid)
        os.close(ready_r)
        code = 1
        try:
            code = _worker_main(settings, ready_w)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(ready_w)
    return _Worker(index, pid, ready_r, time.monotonic())


def _await_ready(worker: _Worker, timeout: float) -> bool:
    readable, _, _ = select.select([worker.ready_fd], [], [], timeout)
    ok = bool(readable) and os.read(worker.ready_fd, 1) == b"R"
    os.close(worker.ready_fd)
    return ok


class _Supervisor:
    """Starts the workers, restarts one that dies, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings  # what each worker serves with (workers=1)
        self.count = count
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self.signals_received = 0
        self.quick_deaths = 0

    def _on_signal(self, signum, _frame) -> None:
        self.signals_received += 1
        if not self.stopping:
            log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stopping = True
        # A second signal is forwarded too: each worker then stops at once.
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def start(self) -> None:
        for index in range(self.count):
            self._start_worker(index, first=True)

    def _start_worker(self, index: int, *, first: bool = False) -> None:
        worker = _fork_worker(self.settings, index)
        self.workers[worker.pid] = worker
        if not _await_ready(worker, READY_TIMEOUT_S):
            if self.stopping:  # asked to stop while starting
                return
            self.stopping = True
            self._signal_workers(signal.SIGTERM)
            self._reap_all()
            raise WorkerError(f"worker {index} did not start (see its log above)")
        if not first:
            log.info("worker %d restarted (pid %d)", index, worker.pid)

    def run(self) -> int:
        """Reap workers until all are gone; returns the exit code."""
        code = 0
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                code = code or (exit_code if exit_code > 0 else 0)
                continue
            log.error("worker %d (pid %d) exited with %d; restarting it", worker.index, pid, exit_code)
            quick = time.monotonic() - worker.started < CRASH_LOOP_WINDOW_S
            self.quick_deaths = self.quick_deaths + 1 if quick else 0
            if self.quick_deaths >= CRASH_LOOP_LIMIT:
                log.error("workers keep dying right after start; stopping")
                self.stopping = True
                self._signal_workers(signal.SIGTERM)
                code = 1
                continue
            self._start_worker(worker.index)
        return code

    def _reap_all(self) -> None:
        for pid in list(self.workers):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.workers.pop(pid, None)


def serve_workers(settings: Settings) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT; exits non-zero if they fail."""
    from lending_grpc.server import database_kind

    _prepare(settings)
    sock, host, port = reserve_port(settings.listen)
    worker_settings = dataclasses.replace(settings, listen=f"{host}:{port}", workers=1)
    supervisor = _Supervisor(worker_settings, settings.workers)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor._on_signal)
    try:
        supervisor.start()
        if not supervisor.stopping:
            log.info(
                "lending-grpc serving on %s:%d (database %s, %d workers, pids %s)",
                host,
                port,
                database_kind(settings),
                settings.workers,
                " ".join(str(pid) for pid in supervisor.workers),
            )
        code = supervisor.run()
    except WorkerError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        sock.close()
    log.info("lending-grpc stopped")
    if code:
        sys.exit(code)
