"""`lending-grpc relay nats://HOST:PORT`: forward the event log to NATS JetStream until SIGTERM/SIGINT.

A server-side process: it reads the log from the database named by
LENDING_DATABASE_URL, like `serve`. The relay itself is in
`lending_grpc/relay/jetstream.py`; docs/events.md ("The NATS relay") is the operator's page.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from lending_grpc.config import Settings
from lending_grpc.core.errors import LendingError
from lending_grpc.core.storage.database import close_database, open_database
from lending_grpc.core.storage.migrations import migrate
from lending_grpc.relay.options import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, RelayError, RelayOptions

# Settings the relay shares with `serve` (flags, LENDING_* variables, .env).
SETTINGS = ("database_url", "db_busy_timeout_ms", "time_zone", "metrics_listen", "log_level", "log_format")
_DURATION = re.compile(r"(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds from '90', '90s', '2m', '12h' or '7d'."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 2m, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_arguments(
    parser: argparse.ArgumentParser, add_setting_flags: Callable[[argparse.ArgumentParser, tuple], None]
) -> None:
    """The relay's own options, then the settings it shares with `serve`."""
    parser.add_argument(
        "nats_url",
        metavar="NATS_URL",
        help="NATS server, e.g. nats://127.0.0.1:4222 (several: comma-separated, the servers of one cluster)",
    )
    parser.add_argument(
        "--stream",
        default=DEFAULT_STREAM,
        help=f"JetStream stream, created if missing (default {DEFAULT_STREAM})",
    )
    parser.add_argument(
        "--subject-prefix",
        default=DEFAULT_SUBJECT_PREFIX,
        help=f"events go to PREFIX.<type>, e.g. {DEFAULT_SUBJECT_PREFIX}.payment_accepted "
        f"(default {DEFAULT_SUBJECT_PREFIX})",
    )
    parser.add_argument(
        "--after",
        type=int,
        default=None,
        metavar="SEQUENCE",
        help="when the stream holds no message: start after this event sequence (default 0, the beginning); "
        "ignored when the stream holds messages, whose last one says where to go on",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=RelayOptions.max_in_flight,
        help="publishes awaiting their JetStream ack at once (1: await each; default 256)",
    )
    parser.add_argument(
        "--page-size",
        type=int,
        default=RelayOptions.page_size,
        help="events read from the log at once (default 1000)",
    )
    parser.add_argument(
        "--poll-interval",
        type=duration,
        default=RelayOptions.poll_interval,
        help="how often to look for new events (default 0.2s)",
    )
    parser.add_argument(
        "--ack-timeout",
        type=duration,
        default=RelayOptions.ack_timeout,
        help="how long to wait for a publish's ack (default 5s)",
    )
    creation = parser.add_argument_group("a stream the relay creates (an existing stream is used as it is)")
    creation.add_argument(
        "--duplicate-window",
        type=duration,
        default=RelayOptions.duplicate_window,
        help="JetStream duplicate window (default 2m)",
    )
    creation.add_argument(
        "--max-age",
        type=duration,
        default=RelayOptions.max_age,
        help="drop messages older than this (default 0: keep every one)",
    )
    creation.add_argument(
        "--max-bytes",
        type=int,
        default=RelayOptions.max_bytes,
        help="drop the oldest messages beyond this size (default -1: no limit)",
    )
    creation.add_argument(
        "--replicas", type=int, default=RelayOptions.replicas, help="stream replicas in a cluster (default 1)"
    )
    add_setting_flags(parser, SETTINGS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Relay until SIGTERM/SIGINT; the exit code: 0 after a signal, 1 on failure, 2 for bad options."""
    try:
        from lending_grpc.relay.jetstream import run_relay
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("nats"):
            raise
        print("lending-grpc: the relay needs nats-py: pip install 'lending-grpc[nats]'", file=sys.stderr)
        return 2
    options = RelayOptions(
        nats_url=args.nats_url,
        stream=args.stream,
        subject_prefix=args.subject_prefix,
        after=args.after,
        page_size=args.page_size,
        max_in_flight=args.max_in_flight,
        poll_interval=args.poll_interval,
        ack_timeout=args.ack_timeout,
        duplicate_window=args.duplicate_window,
        max_age=args.max_age,
        max_bytes=args.max_bytes,
        replicas=args.replicas,
    )
    try:
        options.validate()
    except RelayError as exc:
        print(f"lending-grpc: relay: {exc}", file=sys.stderr)
        return 2
    db = open_database(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms, pool_size=2)
    try:
        migrate(db, settings.time_zone)
        db.release_connection()  # the relay reads on a thread of its own
        return run_relay(db, options, metrics_listen=settings.metrics_listen)
    except RelayError as exc:
        print(f"lending-grpc: relay: {exc}", file=sys.stderr)
        return 1
    except LendingError as exc:  # the database failed while the relay was starting
        print(f"lending-grpc: relay: {exc.message}", file=sys.stderr)
        return 1
    finally:
        close_database(db)
