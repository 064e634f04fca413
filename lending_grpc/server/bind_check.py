"""Can the server bind its addresses? Asked before anything is created on disk, and answered with why not.

gRPC's own failure reads "Failed to bind to address X" whatever the cause.
Binding a plain socket first (then closing it) tells an address already in
use from a host that does not resolve, an address this machine does not have,
or a port that needs privileges, and a refused start leaves no database or key
file behind.
"""

from __future__ import annotations

import errno
import socket

from lending_grpc.addresses import is_unix_socket, parse_host_port
from lending_grpc.api.metrics import worker_address
from lending_grpc.config import Settings

IN_USE = "already in use (is another server running there?)"
_REASONS = {
    errno.EADDRINUSE: IN_USE,
    errno.EADDRNOTAVAIL: "this machine has no such address",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


class ListenError(OSError):
    """An address to serve on cannot be bound; the message names it and says why."""


def bind_problem(address: str) -> str | None:
    """Why ``address`` (HOST:PORT, already validated) cannot be bound now, or None when it can."""
    if is_unix_socket(address):
        return None  # gRPC creates the socket file itself, and says so when it cannot
    target = parse_host_port(address, allow_port_zero=True)
    try:
        found = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return f"cannot resolve the host {target.host!r}"
    problems = []
    for family, kind, proto, _name, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as sock:
                # As gRPC does: connections of a server that just stopped (TIME_WAIT) are no obstacle.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return IN_USE
            problems.append(_REASONS.get(exc.errno or 0) or exc.strerror or str(exc))
    # gRPC serves on every address a name resolves to that it can bind (localhost without IPv6).
    return problems[0] if problems and len(problems) == len(found) else None


def check_listen(address: str, what: str = "listen on") -> None:
    """ListenError ("cannot listen on ADDRESS: already in use ...") unless ``address`` can be bound now."""
    problem = bind_problem(address)
    if problem is not None:
        raise ListenError(f"cannot {what} {address}: {problem}")


def check_server_addresses(settings: Settings) -> None:
    """Check the gRPC address and every process's /metrics address, before the server creates anything."""
    check_listen(settings.listen)
    if settings.metrics_listen:
        for index in range(settings.workers):
            check_listen(worker_address(settings.metrics_listen, index), "serve metrics on")
