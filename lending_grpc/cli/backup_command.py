"""`lending-grpc backup PATH` and `lending-grpc restore BACKUP`: SQLite backups, with their key files.

A database is only half of what a restore needs: emails are sealed with the
data key, and tokens are signed with the JWT key. When the service runs on
the keys it generated beside the SQLite file, the backup copies them beside
itself (mode 0600) and the restore puts them back; keys that come from
LENDING_*_KEY or LENDING_*_KEY_FILE are named, not copied: they live
wherever the operator keeps secrets. PostgreSQL is backed up with pg_dump.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lending_grpc.config import Settings, resolve_data_key
from lending_grpc.core.crypto import UnsealError
from lending_grpc.core.plural import count
from lending_grpc.core.storage.backup import (
    BackupError,
    backup_sqlite,
    restore_sqlite,
    sealed_email_sample,
)
from lending_grpc.core.storage.database import database_file, is_postgresql_url, redact_url

COMMANDS = ("backup", "restore")
_FLAGS = ("database_url", "secret_key_file", "data_key_file", "log_level")

# The keys config.py generates beside the SQLite file as <db file><suffix> (resolve_secret_key,
# resolve_data_key); tests/test_backup_restore.py serves a restored copy on them.
_KEYS = (
    ("JWT signing key", "secret_key", ".jwt-key", "without it every user must sign in again"),
    ("data encryption key", "data_key", ".data-key", "without it no stored email can be read"),
)


def add_commands(commands, add_setting_flags: Callable[[argparse.ArgumentParser, tuple], None]) -> None:
    """Register `backup` and `restore` on the top-level subparsers."""
    backup = commands.add_parser(
        "backup", help="copy the live SQLite database (and its generated key files) to a new file"
    )
    backup.add_argument("path", type=Path, help="the backup file to create (must not exist)")
    add_setting_flags(backup, _FLAGS)
    restore = commands.add_parser(
        "restore", help="check a backup and make it the service's SQLite database (stop the service first)"
    )
    restore.add_argument("backup", type=Path, help="a file made by `lending-grpc backup`")
    restore.add_argument(
        "--force", action="store_true", help="replace an existing database and its generated key files"
    )
    add_setting_flags(restore, _FLAGS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run `backup` or `restore`; returns the exit code."""
    if is_postgresql_url(settings.database_url):
        print(
            f"lending-grpc: {args.command} works on SQLite databases; back up PostgreSQL with pg_dump "
            f"(pg_dump --format=custom --no-owner --file=lending.dump '{redact_url(settings.database_url)}') "
            "and restore with pg_restore: see docs/operations/backups.md",
            file=sys.stderr,
        )
        return 2
    database = database_file(settings.database_url)
    try:
        if args.command == "backup":
            return _backup(settings, database, args.path)
        return _restore(settings, args.backup, database, args.force)
    except BackupError as exc:
        print(f"lending-grpc: {exc}", file=sys.stderr)
        return 1


def _key_source(settings: Settings, name: str) -> str | None:
    """Where the service gets key ``name`` when it is not a generated file; None for a generated one."""
    if getattr(settings, name):
        return f"{Settings.env_name(name)} (its value)"
    if getattr(settings, f"{name}_file"):
        return f"{Settings.env_name(name + '_file')} {getattr(settings, name + '_file')}"
    return None


def _copy_key(source: Path, target: Path, *, replace: bool) -> None:
    """Copy a key file with mode 0600; an existing different ``target`` only with ``replace``."""
    content = source.read_bytes()
    if target.exists():
        if target.read_bytes() == content:
            return
        if not replace:
            raise BackupError(f"{target} holds a different key: pass --force to replace it")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _backup(settings: Settings, database: Path, target: Path) -> int:
    summary = backup_sqlite(database, target)
    print(f"backed up {database} to {target} in {summary.seconds:.2f} s: {summary.describe()}")
    for what, name, suffix, consequence in _KEYS:
        source = _key_source(settings, name)
        generated = database.with_name(database.name + suffix)
        if source is not None:
            print(f"{what}: from {source}; not copied: keep it with the backup ({consequence})")
        elif generated.is_file():
            copy = target.with_name(target.name + suffix)
            _copy_key(generated, copy, replace=False)
            print(f"{what}: generated, {generated}; copied to {copy}")
        else:
            print(f"{what}: none set and none generated beside {database}")
    return 0


def _restore(settings: Settings, backup: Path, database: Path, force: bool) -> int:
    # Keys are looked at first: a key conflict stops the restore before the database is touched.
    copies: list[tuple[str, Path, Path]] = []
    notes: list[str] = []
    for what, name, suffix, consequence in _KEYS:
        source = _key_source(settings, name)
        saved = backup.with_name(backup.name + suffix)
        generated = database.with_name(database.name + suffix)
        if source is not None:
            notes.append(f"{what}: the service uses {source}; it must be the key the backup was made with")
        elif saved.is_file():
            if generated.is_file() and generated.read_bytes() != saved.read_bytes() and not force:
                raise BackupError(f"{generated} holds a different key: pass --force to replace it")
            copies.append((what, saved, generated))
        else:
            notes.append(f"{what}: no {saved} beside the backup: a new one will be generated ({consequence})")
    summary = restore_sqlite(backup, database, force=force)
    print(f"restored {backup} into {database} in {summary.seconds:.2f} s: {summary.describe()}")
    for what, saved, generated in copies:
        _copy_key(saved, generated, replace=force)
        print(f"{what}: copied {saved} to {generated}")
    for note in notes:
        print(note)
    return _check_emails(settings, database)


def _check_emails(settings: Settings, database: Path) -> int:
    """Try the data key on a few restored emails: a restore without its key has lost them."""
    sample = sealed_email_sample(database)
    if not sample:
        print("emails: none stored")
        return 0
    has_key = _key_source(settings, "data_key") or database.with_name(database.name + ".data-key").is_file()
    if not has_key:
        checked = count(len(sample), "sealed email")
        print(f"emails: NOT readable: no data key for the {checked} checked", file=sys.stderr)
        return 1
    sealer = resolve_data_key(settings)
    try:
        for user_id, sealed in sample:
            sealer.open(sealed, user_id)
    except UnsealError as exc:
        print(
            f"emails: NOT readable with this data key ({exc}): configure the key the backup was made with",
            file=sys.stderr,
        )
        return 1
    print(f"emails: readable with the data key ({len(sample)} checked)")
    return 0
