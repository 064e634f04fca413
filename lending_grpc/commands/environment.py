"""Environment variables read by the client commands (never by `serve`).

They share the LENDING_ prefix with the server's settings, so config.py
imports this list to accept them in the same `.env` without calling them
unknown; a test makes sure no server setting ever takes one of these names.
"""

SERVER = "LENDING_SERVER"
SERVER_TLS = "LENDING_SERVER_TLS"
SERVER_CA_FILE = "LENDING_SERVER_CA_FILE"
CLIENT_CERT_FILE = "LENDING_CLIENT_CERT_FILE"
CLIENT_KEY_FILE = "LENDING_CLIENT_KEY_FILE"

CLIENT_ENV_NAMES = (SERVER, SERVER_TLS, SERVER_CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE)
