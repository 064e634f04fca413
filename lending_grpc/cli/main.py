"""The `lending-grpc` entry point: parses the command line and hands each command to its module.

Server-side commands (`serve`, `migrate`) are here; the operator commands
(`users`, `audit`) live in `admin_commands.py`, `backup` and `restore` in
`backup_command.py`, `health` in `health_command.py`, the event relay (`relay`) in
`relay_command.py` and the client commands (register, login, loan ..., pay) in `client_commands/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from lending_grpc.cli import admin_commands, backup_command, health_command, relay_command
from lending_grpc.cli.client_commands.parser import add_client_commands, run_client_command
from lending_grpc.config import ConfigError, Settings, load_settings
from lending_grpc.core.crypto import DataKeyError
from lending_grpc.core.storage.database import DatabaseError, close_database, open_database
from lending_grpc.core.storage.migrations import migrate
from lending_grpc.logs import configure_logging

_TYPES = {bool: None, int: int, float: float, str: str}


def _add_setting_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    for field in dataclasses.fields(Settings):
        if not field.metadata["flag"] or (names is not None and field.name not in names):
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = (
            f"{field.metadata['help']} (env {Settings.env_name(field.name)}, default {field.default!r})"
        )
        if isinstance(field.default, bool):
            parser.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                dest=field.name,
                type=_TYPES[type(field.default)],
                default=None,
                metavar=field.name.upper(),
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lending-grpc", description="Loan billing service over gRPC.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve gRPC until SIGTERM/SIGINT")
    _add_setting_flags(serve)
    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    _add_setting_flags(
        migrate, ("database_url", "db_busy_timeout_ms", "time_zone", "log_level", "log_format")
    )
    health = commands.add_parser("health", help="check a running server's health service (exit 0 = SERVING)")
    health_command.add_arguments(health)
    admin_commands.add_commands(commands, _add_setting_flags)
    backup_command.add_commands(commands, _add_setting_flags)
    relay = commands.add_parser("relay", help="forward the event log to NATS JetStream until SIGTERM/SIGINT")
    relay_command.add_arguments(relay, _add_setting_flags)
    add_client_commands(commands)  # register, login, loan ..., pay, delinquent: client_commands/
    return parser


# What a shell reports for a process killed by SIGPIPE (128 + 13): `set -o pipefail` sees it as usual.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lending-grpc` console script."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader went away (`lending-grpc audit export | head`): stop quietly, as `cat` would.
        # Python would otherwise complain again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "health":  # a client: the server's settings do not apply
        return health_command.run(args)
    if getattr(args, "client_command", None) is not None:
        return run_client_command(args)
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load_settings(flags)
    except ConfigError as exc:
        print(f"lending-grpc: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "migrate":
            return _migrate(settings)
        if args.command in admin_commands.COMMANDS:
            return admin_commands.run(args, settings)
        if args.command in backup_command.COMMANDS:
            return backup_command.run(args, settings)
        if args.command == "relay":
            return relay_command.run(args, settings)
        from lending_grpc.server import serve  # grpc and the servicers load only to serve

        serve(settings)
    except (ConfigError, DataKeyError) as exc:
        print(f"lending-grpc: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except (DatabaseError, OSError) as exc:
        print(f"lending-grpc: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(settings: Settings) -> int:
    db = open_database(settings.database_url, busy_timeout_ms=settings.db_busy_timeout_ms)
    try:
        applied = migrate(db, settings.time_zone)
    finally:
        close_database(db)
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
