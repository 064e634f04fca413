"""Helpers for the fault tests: reaching every RPC thread, reading metrics and error details."""

from __future__ import annotations

import re
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


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``condition`` until it holds; the seconds it took, or None on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(interval)
    return None
