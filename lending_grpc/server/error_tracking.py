"""Reporting unexpected errors to Sentry: one event per INTERNAL answer, with no personal data.

Imported only when ``LENDING_SENTRY_DSN`` is set (it imports ``sentry_sdk``,
from the ``lending-grpc[sentry]`` extra), so a server without a DSN neither
loads nor pays for it.

The pipeline calls ``ErrorTracker`` once for each exception it answers with
INTERNAL (its ``on_internal_error`` hook). Nothing else reaches Sentry: the
SDK's integrations are off (no logging integration, which would report the
same error a second time from its log line, no breadcrumbs, no threading or
excepthook capture), and so are local variables and source lines.

An event says where and what, never with what data: the exception types and
their stack frames (file, function, line), the tags ``method``,
``request_id``, ``worker`` and ``pid``, the release and the environment.
Exception messages are withheld, since they can quote anything (an email, a
token, an SQL parameter): the server's own log has the message and the
traceback under the same ``request_id``. ``before_send`` enforces this by
rebuilding each event from an allow-list of fields.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import sentry_sdk

from lending_grpc.api.call import Call
from lending_grpc.config import Settings, redact_dsn

log = logging.getLogger("lending_grpc.errors")

WITHHELD = "(message withheld: the server log has it under this event's request_id)"
TAGS = ("method", "request_id", "worker", "pid")
_EVENT_FIELDS = ("event_id", "timestamp", "platform", "level", "release", "environment", "server_name", "sdk")
_FRAME_FIELDS = ("filename", "abs_path", "module", "function", "lineno", "colno", "in_app")


def release() -> str:
    """``lending-grpc@<installed version>``, the release every event names."""
    try:
        return f"lending-grpc@{version('lending-grpc')}"
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "lending-grpc@unknown"


def scrub(event: dict[str, Any], _hint: Any = None) -> dict[str, Any]:
    """The event rebuilt from the fields that cannot carry personal data (``before_send``)."""
    clean = {name: event[name] for name in _EVENT_FIELDS if name in event}
    tags = event.get("tags") or {}
    clean["tags"] = {name: str(tags[name]) for name in TAGS if name in tags}
    trace = (event.get("contexts") or {}).get("trace")
    if isinstance(trace, dict):  # random ids that tie the event to its envelope
        clean["contexts"] = {"trace": {k: trace[k] for k in ("trace_id", "span_id") if k in trace}}
    values = []
    for value in (event.get("exception") or {}).get("values") or ():
        frames = ((value.get("stacktrace") or {}).get("frames")) or ()
        values.append(
            {
                "type": value.get("type"),
                "module": value.get("module"),
                "value": WITHHELD,
                "mechanism": value.get("mechanism"),
                "stacktrace": {
                    "frames": [{k: frame[k] for k in _FRAME_FIELDS if k in frame} for frame in frames]
                },
            }
        )
    if values:
        clean["exception"] = {"values": values}
    return clean


class ErrorTracker:
    """The pipeline's ``on_internal_error`` hook, sending to Sentry; ``close`` flushes what is queued."""

    def __init__(self, settings: Settings, *, worker_index: int = 0) -> None:
        self._worker = str(worker_index)
        self.release = release()
        sentry_sdk.init(
            dsn=settings.sentry_dsn,
            release=self.release,
            environment=settings.sentry_environment or None,  # None: the SDK's default, "production"
            # send_default_pii is left unset, which means off (2.75 deprecates passing it in
            # favour of data_collection, whose defaults collect more): no user, no IP address.
            include_local_variables=False,
            include_source_context=False,
            max_breadcrumbs=0,
            default_integrations=False,  # logging, threading, excepthook, stdlib, argv, modules...
            auto_enabling_integrations=False,
            auto_session_tracking=False,
            send_client_reports=False,
            enable_logs=False,
            enable_metrics=False,
            before_send=scrub,
        )
        self._client = sentry_sdk.get_client()
        if worker_index == 0:
            log.info(
                "INTERNAL errors are reported to Sentry at %s (release %s, environment %s)",
                redact_dsn(settings.sentry_dsn),
                self.release,
                settings.sentry_environment or "production",
            )

    def __call__(self, exc: BaseException, call: Call) -> None:
        tags = {
            "method": call.method,
            "request_id": call.request_id,
            "worker": self._worker,
            "pid": os.getpid(),
        }
        try:
            sentry_sdk.capture_exception(exc, tags=tags)
        except Exception:  # the caller still answers INTERNAL; the log line has the error itself
            log.warning("could not report an error to Sentry", exc_info=True)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (at most ``timeout`` seconds), then stop the SDK's thread."""
        self._client.close(timeout=timeout)
