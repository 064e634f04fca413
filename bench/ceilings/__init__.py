"""Ceiling servers: what a Python gRPC server can do with no database, or with bare sqlite3."""
