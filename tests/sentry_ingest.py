"""A stand-in for Sentry's ingest host: a local HTTP server that keeps the envelopes the real SDK sends."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
import zlib
from typing import Any

PUBLIC_KEY = "0123456789abcdef0123456789abcdef"


class SentryIngest:
    """Accepts ``POST /api/<project>/envelope/`` and keeps each body, decompressed, and its headers.

    Use as a context manager; ``dsn`` points the SDK here.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        ingest = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding:
                    raise AssertionError(f"unexpected Content-Encoding {encoding}")
                ingest.requests.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_port
        self.dsn = f"http://{PUBLIC_KEY}@127.0.0.1:{self.port}/1"

    def __enter__(self) -> SentryIngest:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def raw(self) -> bytes:
        """Every byte received, decompressed: what a leak check greps."""
        return b"\n".join(body for _path, _headers, body in self.requests)

    def items(self) -> list[tuple[dict[str, Any], bytes]]:
        """(item header, payload) of every item of every envelope received."""
        found = []
        for _path, _headers, body in self.requests:
            _envelope_header, _, rest = body.partition(b"\n")
            while rest.strip():
                header_line, _, rest = rest.partition(b"\n")
                header = json.loads(header_line)
                if "length" in header:
                    payload, rest = rest[: header["length"]], rest[header["length"] :]
                    rest = rest.removeprefix(b"\n")
                else:
                    payload, _, rest = rest.partition(b"\n")
                found.append((header, payload))
        return found

    def events(self) -> list[dict[str, Any]]:
        """The error events received, parsed."""
        return [json.loads(payload) for header, payload in self.items() if header.get("type") == "event"]

    def wait_for_events(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events once ``count`` have arrived (or all there are after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.events()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.events()
