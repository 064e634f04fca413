"""Account administration for the `lending-grpc users ...` commands: roles, erasure, sealing emails.

None of this is reachable over gRPC: granting a role or erasing a user needs
shell access to the server's configuration (its database and data key).
Every change is audited in the same transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from lending_grpc.core import audit, fields
from lending_grpc.core.clock import Clock
from lending_grpc.core.crypto import DataKeyError, Sealer, UnsealError, sealed_prefix
from lending_grpc.core.errors import FailedPrecondition, InvalidArgument, NotFound
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import LoginThrottle, TokenFamily, User
from lending_grpc.core.views import ROLES, SERVER_ACTOR, Actor

ERASED_PASSWORD_HASH = "!erased"  # not an argon2 hash: nothing ever verifies against it


@dataclasses.dataclass(frozen=True, slots=True)
class ErasureReport:
    """What erasing a user did."""

    user_id: str
    tombstone: str
    sessions_revoked: int


class AccountAdmin:
    """Roles, erasure and the one-off sealing of legacy plaintext emails."""

    def __init__(self, db: LendingDatabase, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def _user_row(self, username: str) -> User:
        query = User.select().where(User.username_key == fields.username_key(username))
        row = self._db.lock_rows(query).first()
        if row is None or row.erased_time_us is not None:
            raise NotFound(f"no user {username!r}")
        return row

    def set_role(self, actor: Actor, username: str, role: str, granted: bool) -> str:
        """Grant (or revoke) ``role``; returns the public user id. Effective within the auth cache time."""
        if role not in ROLES:
            raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}")

        def change() -> str:
            row = self._user_row(username)
            new = role if granted else None
            if not granted and row.role != role:
                raise FailedPrecondition(f"user {username!r} does not have the role {role!r}")
            User.update(role=new).where(User.id == row.id).execute()
            audit.record(
                self._db,
                actor,
                "role.grant" if granted else "role.revoke",
                subject=row.user_id,
                summary={"role": role, "before": row.role},
            )
            return row.user_id

        return self._db.write_transaction(change)

    def erase(self, actor: Actor, username: str) -> ErasureReport:
        """Remove a user's personal data and block the account; loans, payments and audit rows stay.

        The username becomes ``erased-<user id>``, the sealed email and the
        password hash are dropped, every session is revoked and the sign-in
        throttle row goes. The public user id (not personal data by itself)
        still ties loans, payments and audit rows together, so they reconcile.
        """

        def work() -> ErasureReport:
            row = self._user_row(username)
            now = self._clock.now_us()
            tombstone = f"erased-{row.user_id}"
            User.update(
                username=tombstone,
                username_key=tombstone,
                email="",
                email_sealed=None,
                password_hash=ERASED_PASSWORD_HASH,
                role=None,
                erased_time_us=now,
            ).where(User.id == row.id).execute()
            revoked = (
                TokenFamily.update(revoked_time_us=now, revoked_reason="erased")
                .where((TokenFamily.user == row.id) & TokenFamily.revoked_time_us.is_null())
                .execute()
            )
            LoginThrottle.delete().where(LoginThrottle.user == row.id).execute()
            audit.record(
                self._db, actor, "user.erase", subject=row.user_id, summary={"sessions_revoked": revoked}
            )
            return ErasureReport(row.user_id, tombstone, revoked)

        return self._db.write_transaction(work)


def seal_legacy_emails(db: LendingDatabase, sealer: Sealer, batch: int = 500) -> int:
    """Seal plaintext emails (schema v1) and re-seal those of older keys; returns how many. Run at start.

    Idempotent and cheap once done (a scan that finds nothing). Each batch is
    one write transaction with its rows locked, so several processes
    starting together handle each row once. After a key rotation
    (``LENDING_DATA_KEY=2:NEW,1:OLD``) this moves every value to the new key,
    so the old one can then be removed.
    """
    stale = (User.email != "") | (
        User.email_sealed.is_null(False) & ~User.email_sealed.startswith(sealer.current_prefix)
    )
    total = 0
    while True:

        def seal_batch() -> int:
            query = (
                User.select(User.id, User.user_id, User.email, User.email_sealed).where(stale).limit(batch)
            )
            rows = list(db.lock_rows(query))
            for row in rows:
                try:
                    plain = row.email or sealer.open(row.email_sealed, row.user_id)
                except UnsealError as exc:
                    raise DataKeyError(
                        f"LENDING_DATA_KEY: cannot re-seal the email of user {row.user_id}: {exc}; keep "
                        "the old key in LENDING_DATA_KEY (after the new one) until every email is re-sealed"
                    ) from None
                User.update(email="", email_sealed=sealer.seal(plain, row.user_id)).where(
                    User.id == row.id
                ).execute()
            if rows:
                audit.record(db, SERVER_ACTOR, "user.emails_sealed", summary={"count": len(rows)})
            return len(rows)

        done = db.write_transaction(seal_batch)
        total += done
        if done < batch:
            return total


def emails_sealed_with(db: LendingDatabase, versions: Iterable[int]) -> bool:
    """Whether any stored email is still sealed with one of the data key ``versions``.

    A scan of the user table: for the rare moment a key is about to be dropped.
    """
    condition = None
    for version in versions:
        match = User.email_sealed.startswith(sealed_prefix(version))
        condition = match if condition is None else condition | match
    if condition is None:
        return False
    with db.unit_of_work():
        return User.select(User.id).where(condition).exists()
