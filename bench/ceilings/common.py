"""Run a generic-handler gRPC server in N processes sharing one port with SO_REUSEPORT.

Shaped like lending-grpc's server (a sync grpc.server on a 16-thread pool, the
same message size limits), so a ceiling differs from lending-grpc only in what
its handlers do.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent import futures

import grpc

Handlers = dict[str, grpc.RpcMethodHandler]  # full method path -> handler


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _generic(handlers: Handlers) -> list[grpc.GenericRpcHandler]:
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, handler in handlers.items():
        service, method = path.strip("/").split("/")
        by_service.setdefault(service, {})[method] = handler
    return [grpc.method_handlers_generic_handler(s, m) for s, m in by_service.items()]


def _serve_one(make_handlers: Callable[[], Handlers], port: int, threads: int) -> None:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        handlers=_generic(make_handlers()),
        maximum_concurrent_rpcs=256,
        options=[("grpc.so_reuseport", 1)],
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(0).wait()


def run(name: str, make_handlers: Callable[[], Handlers], workers: int, threads: int = 16) -> None:
    """Serve in ``workers`` processes; print 'serving on 127.0.0.1:PORT' once all are up."""
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_serve_one, args=(make_handlers, port, threads)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    for _ in range(200):  # wait until the port answers
        try:
            grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=0.1)
            break
        except grpc.FutureTimeoutError:
            if not all(p.is_alive() for p in procs):
                sys.exit(f"{name}: a worker died")
    print(f"{name} serving on 127.0.0.1:{port} ({workers} processes)", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(5)
