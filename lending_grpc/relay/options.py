"""What `lending-grpc relay` is asked to do, and the subjects it publishes to (no nats-py needed here)."""

from __future__ import annotations

import dataclasses
import re

DEFAULT_STREAM = "LENDING_EVENTS"
DEFAULT_SUBJECT_PREFIX = "lending.events"
MAX_IN_FLIGHT = 4000  # nats-py's own bound on pending asynchronous publishes
_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


class RelayError(Exception):
    """The relay cannot start, or cannot go on; the message (one line) says why and what to do."""


@dataclasses.dataclass(frozen=True)
class RelayOptions:
    """What ``lending-grpc relay`` was asked to do; durations in seconds."""

    nats_url: str  # one URL, or several separated by commas (the servers of a cluster)
    stream: str = DEFAULT_STREAM
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    after: int | None = None  # where to start when the stream holds no message (None: 0 if never used)
    page_size: int = 1000  # events read from the log at a time
    max_in_flight: int = 256  # publishes awaiting their ack; 1 awaits each ack before the next publish
    poll_interval: float = 0.2
    ack_timeout: float = 5.0
    # For a stream the relay creates; an existing stream is used as it is.
    duplicate_window: float = 120.0
    max_age: float = 0.0  # 0: keep every message
    max_bytes: int = -1  # -1: no limit
    replicas: int = 1

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    def validate(self) -> None:
        """Raise RelayError naming the first unusable option."""
        if not self.servers:
            raise RelayError("give the NATS server URL, e.g. nats://127.0.0.1:4222")
        for url in self.servers:
            if "://" not in url:
                raise RelayError(f"{url!r} is not a NATS URL: write nats://HOST:PORT (or tls://HOST:PORT)")
        if not _NAME.fullmatch(self.stream):
            raise RelayError(f"--stream {self.stream!r}: use letters, digits, '_' and '-' only")
        if not _PREFIX.fullmatch(self.subject_prefix):
            raise RelayError(
                f"--subject-prefix {self.subject_prefix!r}: dot-separated tokens of letters, digits, "
                "'_' and '-' (no wildcards)"
            )
        checks = (
            ("--after", self.after is None or self.after >= 0, "must not be negative"),
            ("--page-size", 1 <= self.page_size <= 10_000, "must be between 1 and 10000"),
            ("--max-in-flight", 1 <= self.max_in_flight <= MAX_IN_FLIGHT, f"must be 1 to {MAX_IN_FLIGHT}"),
            ("--poll-interval", 0.01 <= self.poll_interval <= 60, "must be between 0.01 and 60 seconds"),
            ("--ack-timeout", 0.1 <= self.ack_timeout <= 300, "must be between 0.1 and 300 seconds"),
            ("--duplicate-window", self.duplicate_window >= 1, "must be at least 1 second"),
            ("--max-age", self.max_age >= 0, "must not be negative (0 keeps every message)"),
            ("--max-bytes", self.max_bytes == -1 or self.max_bytes > 0, "must be positive, or -1 (no limit)"),
            ("--replicas", 1 <= self.replicas <= 5, "must be between 1 and 5"),
        )
        for flag, ok, problem in checks:
            if not ok:
                raise RelayError(f"{flag} {problem}")
        if self.max_age and self.duplicate_window > self.max_age:
            raise RelayError("--duplicate-window must not be longer than --max-age")


def subject_for(prefix: str, event_type: str) -> str:
    """The subject of an event type: ``lending.events.payment_accepted`` for PAYMENT_ACCEPTED."""
    return f"{prefix}.{event_type.lower()}"
