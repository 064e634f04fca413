"""Keep gRPC's C-core log lines (`E1130 ... add_port.cc:83] Failed to add port ...`) off the terminal.

The command's own messages say what went wrong, in one line; gRPC's would
repeat it in its own words first. gRPC reads GRPC_VERBOSITY once, when it is
imported, so this runs before any module of the command imports grpc (the
package's `__init__`), and forked `serve --workers` processes inherit it.
Whoever sets GRPC_VERBOSITY or GRPC_TRACE themselves gets gRPC's lines as asked.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def quiet_grpc_core_logs(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set GRPC_VERBOSITY=NONE unless the user chose gRPC's verbosity or tracing."""
    if "GRPC_VERBOSITY" not in environ and "GRPC_TRACE" not in environ:
        environ["GRPC_VERBOSITY"] = "NONE"
