"""The `lending-grpc` command line: server, operator and client commands (entry point: `main.py`)."""

from lending_grpc.cli.grpc_core_logs import quiet_grpc_core_logs

quiet_grpc_core_logs()  # before any command module imports grpc
