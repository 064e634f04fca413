"""`lending-grpc health`: ask a running server's grpc.health.v1 service, for container health checks.

Exit status 0 when the service reports SERVING, 1 otherwise (NOT_SERVING,
unreachable, TLS failure, timeout), so Docker's HEALTHCHECK (which reserves
exit status 2) and exec probes can use it without a separate
grpc_health_probe binary; 2 only for a malformed command line. The server is
--server or LENDING_SERVER, as for the client commands.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lending_grpc.cli.server_option import ServerAddressError, add_server_option, server_address
from lending_grpc.client.exceptions import LendingError
from lending_grpc.client.reachability import wait_until_connected


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_option(parser)
    # The old name of --server, kept so that health checks written with it go on working.
    parser.add_argument("--address", dest="server", help=argparse.SUPPRESS)
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    parser.add_argument("--tls-ca", default="", help="PEM CA that signed the server certificate (TLS)")
    parser.add_argument("--tls-server-name", default="", help="name to expect in the server certificate")
    parser.add_argument("--tls-cert", default="", help="client certificate, when the server requires mTLS")
    parser.add_argument("--tls-key", default="", help="key of --tls-cert")


def _channel(args: argparse.Namespace, server: str) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(server)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes(),
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(server, credentials, options=options)


def run(args: argparse.Namespace) -> int:
    """Print the health status; 0 when SERVING."""
    try:
        server = server_address(args.server, os.environ)
    except ServerAddressError as exc:
        print(f"lending-grpc: {exc}", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("lending-grpc: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        deadline = time.monotonic() + args.timeout  # one budget for connecting and asking
        with _channel(args, server) as channel:
            wait_until_connected(channel, server, args.timeout)
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=max(deadline - time.monotonic(), 0.1),
            )
    except LendingError as exc:
        print(f"lending-grpc: {exc.message}", file=sys.stderr)
        return 1
    except grpc.RpcError as err:
        print(f"lending-grpc: {server}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lending-grpc: cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
