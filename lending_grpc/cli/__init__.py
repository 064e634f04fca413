"""The `lending-grpc` command line: server, operator and client commands (entry point: `main.py`)."""
