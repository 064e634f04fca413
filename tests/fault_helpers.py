"""Helpers for the fault tests: every RPC thread, metrics, error details, a cuttable TCP proxy."""

from __future__ import annotations

import re
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lending_grpc.server import RunningServer


def on_every_rpc_thread(running: RunningServer, work: Callable[[], None]) -> None:
    """Run ``work`` once on each of the server's RPC threads (each has its own SQLite connection).

    As many tasks as the pool has threads, each waiting at a barrier until all
    have started: no thread can take two, so every thread runs one.
    """
    threads = running.executor._max_workers
    barrier = threading.Barrier(threads)

    def task() -> None:
        barrier.wait(10)
        work()

    for future in [running.executor.submit(task) for _ in range(threads)]:
        future.result(10)


def scrape(running: RunningServer) -> str:
    """The server's /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics.port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a /metrics text (0 when the series does not exist yet)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))).strip(",") == wanted:
            return float(match.group(2))
    return 0.0


def error_detail(err: grpc.RpcError, kind):
    """The detail of type ``kind`` in an error's google.rpc.Status, else None."""
    status = rpc_status.from_call(err)
    for packed in status.details if status else ():
        if packed.Is(kind.DESCRIPTOR):
            message = kind()
            packed.Unpack(message)
            return message
    return None


def reason_of(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of an error ('' when it has none)."""
    info = error_detail(err, error_details_pb2.ErrorInfo)
    return info.reason if info else ""


class CuttableProxy:
    """A TCP proxy to ``target`` on 127.0.0.1:<port> that a test can cut and restore.

    Cutting closes every proxied connection and refuses new ones (the port
    stops listening), as when the database server's host or network goes
    down; restoring listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._stopped = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._peers: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._run, name="cuttable-proxy", daemon=True)
        self._thread.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the proxy thread (the selector is not thread-safe) and wait for it."""
        done = threading.Event()
        with self._lock:
            self._pending = (action, done)
            self._wake_w.send(b"x")
        if not done.wait(10):
            raise RuntimeError("the proxy thread did not answer")

    def cut(self) -> None:
        """Close every connection through the proxy and stop accepting new ones."""

        def action() -> None:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._peers):
                self._drop(sock)

        self._call(action)

    def restore(self) -> None:
        """Listen again on the same port."""

        def action() -> None:
            if self._listener is None:
                self._listener = self._listen(self.port)
                self._selector.register(self._listener, selectors.EVENT_READ, "accept")

        self._call(action)

    def close(self) -> None:
        self.cut()
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(5)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._peers.pop(one, None)
            try:
                self._selector.unregister(one)
            except (KeyError, ValueError):
                pass
            try:
                # An abortive close (RST), like a host that went away, not a polite FIN.
                one.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            one.close()

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                    with self._lock:
                        pending, self._pending = getattr(self, "_pending", None), None
                    if pending is not None:
                        action, done = pending
                        action()
                        done.set()
                elif key.data == "accept":
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        for one in (client, upstream):
            one.setblocking(False)
            one.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peers[client], self._peers[upstream] = upstream, client
        self._selector.register(client, selectors.EVENT_READ, "pipe")
        self._selector.register(upstream, selectors.EVENT_READ, "pipe")

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
        except OSError:
            pass
        self._drop(sock)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``condition`` until it holds; the seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    return None
