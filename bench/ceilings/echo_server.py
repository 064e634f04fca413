"""Ceiling 1: a bare gRPC server that answers every lending.v1 method with the request bytes.

No decoding, no database, no interceptors: what grpcio's Python path costs per call.

    python bench/ceilings/echo_server.py --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.ceilings import common  # noqa: E402
from bench.methods import ALL_METHODS  # noqa: E402


def _echo(request: bytes, context) -> bytes:
    return request


def handlers() -> common.Handlers:
    # No (de)serializers: the bytes go back as they came.
    return {path: grpc.unary_unary_rpc_method_handler(_echo) for path in ALL_METHODS}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=16, help="RPC threads per process")
    args = parser.parse_args()
    common.run("echo", handlers, args.workers, args.threads)
