"""HOST:PORT addresses: the one parser behind --listen, --metrics-listen and the clients' --server.

gRPC itself is lenient in surprising ways (it binds `127.0.0.1:99999` as port
34463, port 99999 modulo 65536) and terse in others (`Failed to bind to address
nonsense`), so addresses are checked here first and refused with a message that
says what is wrong.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

# gRPC's Unix domain socket targets pass through unchecked: the path is the operator's business.
UNIX_PREFIXES = ("unix:", "unix-abstract:")
EXAMPLE = "127.0.0.1:50051"
MAX_PORT = 65535
_PORT = re.compile(r"[0-9]{1,5}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


class AddressError(ValueError):
    """Not a usable HOST:PORT; the message says what is wrong, the caller adds which option it was."""


@dataclasses.dataclass(frozen=True)
class HostPort:
    """A parsed address; ``host`` is without the brackets of an IPv6 address."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_unix_socket(address: str) -> bool:
    """Whether ``address`` names a Unix domain socket (`unix:/path`, `unix-abstract:name`)."""
    return any(address.startswith(prefix) and len(address) > len(prefix) for prefix in UNIX_PREFIXES)


def parse_host_port(text: str, *, allow_port_zero: bool = False) -> HostPort:
    """``text`` as HOST:PORT (IPv6 in brackets), or AddressError saying what is wrong.

    ``allow_port_zero`` is for addresses to listen on, where port 0 picks a free port.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise AddressError(f"expected HOST:PORT, e.g. {EXAMPLE}")
    lowest = 0 if allow_port_zero else 1
    if not _PORT.fullmatch(port_text) or not lowest <= int(port_text) <= MAX_PORT:
        raise AddressError(f"the port must be a number from {lowest} to {MAX_PORT}")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return HostPort(str(ipaddress.IPv6Address(host[1:-1])), port)
        except ValueError:
            raise AddressError(f"{host} is not an IPv6 address") from None
    if not host:
        raise AddressError(f"the host is missing, e.g. {EXAMPLE}")
    if ":" in host:
        raise AddressError("write an IPv6 address in brackets, e.g. [::1]:50051")
    if not _HOST_NAME.fullmatch(host):
        raise AddressError(f"{host!r} is not a host name or an IP address")
    return HostPort(host, port)
