"""--server HOST:PORT, or LENDING_SERVER: where the client commands and `health` find the server."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from lending_grpc.addresses import AddressError, is_unix_socket, parse_host_port
from lending_grpc.config import ClientEnv

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_HELP = (
    f"the server's address, HOST:PORT (IPv6 in brackets: [::1]:50051); "
    f"default: env {ClientEnv.SERVER}, else {DEFAULT_SERVER}"
)


class ServerAddressError(ValueError):
    """--server or LENDING_SERVER is not HOST:PORT; the message names which and what is wrong."""


def add_server_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The --server option (default None: then LENDING_SERVER, then the default address)."""
    parser.add_argument("--server", metavar="HOST:PORT", help=SERVER_HELP)


def server_address(option: str | None, environ: Mapping[str, str]) -> str:
    """--server if given, else LENDING_SERVER if set, else 127.0.0.1:50051; checked either way."""
    if option is not None:
        text, source = option, "--server"
    elif environ.get(ClientEnv.SERVER):
        text, source = environ[ClientEnv.SERVER], ClientEnv.SERVER
    else:
        return DEFAULT_SERVER
    if is_unix_socket(text):
        return text
    try:
        parse_host_port(text)
    except AddressError as exc:
        raise ServerAddressError(f"{source} {text!r}: {exc}") from None
    return text
