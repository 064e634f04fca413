"""`lending-grpc health`: ask a running server's grpc.health.v1 service, for container health checks.

Exit status 0 when the service reports SERVING, 1 otherwise (NOT_SERVING,
unreachable, TLS failure, timeout), so Docker's HEALTHCHECK and exec probes
can use it without a separate grpc_health_probe binary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port to check")
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds before giving up")
    parser.add_argument("--tls-ca", default="", help="PEM CA that signed the server certificate (TLS)")
    parser.add_argument("--tls-server-name", default="", help="name to expect in the server certificate")
    parser.add_argument("--tls-cert", default="", help="client certificate, when the server requires mTLS")
    parser.add_argument("--tls-key", default="", help="key of --tls-cert")


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes(),
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def run(args: argparse.Namespace) -> int:
    """Print the health status; 0 when SERVING."""
    try:
        with _channel(args) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
    except grpc.RpcError as err:
        print(f"{args.address}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot read a TLS file: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
