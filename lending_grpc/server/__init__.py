"""Building and running the gRPC server: one process (`serve.py`) or several (`workers.py`)."""

from lending_grpc.server.bind_check import ListenError
from lending_grpc.server.build import RunningServer, create_server, prepare_database
from lending_grpc.server.serve import serve

__all__ = ["ListenError", "RunningServer", "create_server", "prepare_database", "serve"]
