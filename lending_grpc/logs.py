"""Log output: plain text for people, or one JSON object per line for log pipelines.

Every record written while an RPC is being served carries that RPC's
request id (from the pipeline's current Call), so an error line and the
access line of the same call can be joined.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from lending_grpc.api.call import current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_HANDLER_NAME = "lending_grpc"


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to the current call's request id ("" outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, rpc fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            entry["request_id"] = request_id
        rpc = getattr(record, "rpc", None)
        if isinstance(rpc, dict):
            entry.update(rpc)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: control characters and odd unicode can never break the one-line framing.
        return json.dumps(entry, ensure_ascii=True, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send logs to stderr at ``level`` in the ``text`` or ``json`` format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    # Replace only our own handler (configured twice in one process); leave others' (pytest's) alone.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Peewee logs every statement with its parameters (password hashes,
    # emails) at DEBUG: never let it through, whatever the service level.
    logging.getLogger("peewee").setLevel(logging.INFO)
    # Neither format names these, and gathering them for every record
    # (one access-log line per RPC) was a visible share of a cheap call.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Nor the caller's file and line, whose stack walk is the priciest part
    # of a record (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
