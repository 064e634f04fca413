"""Brute-force protection: failed sign-ins counted per account in the database, then a lockout.

The count lives in ``login_throttle`` and is changed only inside a write
transaction that locks the account's row (BEGIN IMMEDIATE on SQLite,
SELECT ... FOR UPDATE on PostgreSQL), so concurrent failures from any
number of server processes are each counted exactly once.

After ``max_failures`` failures within ``window_s`` the account is locked for
``lockout_s``, doubling with each further lockout (``lockout_s * 2**(n-1)``,
at most ``lockout_max_s``). A successful sign-in resets the ladder, and so
does a quiet period of ``lockout_max_s`` after a lockout ended.
"""

from __future__ import annotations

import dataclasses

from lending_grpc.core import audit
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import LoginThrottle
from lending_grpc.core.views import Actor

_US = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class LoginPolicy:
    """How many failures, in what window, lock an account, and for how long."""

    max_failures: int = 5
    window_s: int = 900
    lockout_s: int = 300
    lockout_max_s: int = 86400

    def lockout_for(self, lockouts: int) -> int:
        """Seconds of the ``lockouts``-th consecutive lockout (1-based)."""
        if lockouts > 40:  # 2**40 seconds is past any sane maximum; avoid huge ints
            return self.lockout_max_s
        return min(self.lockout_s * 2 ** (lockouts - 1), self.lockout_max_s)


@dataclasses.dataclass(frozen=True, slots=True)
class Lockout:
    """An account refusing sign-ins for ``seconds``; ``started`` when this failure locked it."""

    seconds: float
    started: bool


def remaining_lockout_s(user_pk: int, now_us: int) -> float:
    """Seconds the account stays locked (0 when it is not locked); a plain read."""
    row = LoginThrottle.select(LoginThrottle.locked_until_us).where(LoginThrottle.user == user_pk).first()
    if row is None or row.locked_until_us <= now_us:
        return 0.0
    return (row.locked_until_us - now_us) / _US


def _locked_row(db: LendingDatabase, user_pk: int) -> LoginThrottle | None:
    return db.lock_rows(LoginThrottle.select().where(LoginThrottle.user == user_pk)).first()


def record_failure(
    db: LendingDatabase, actor: Actor, policy: LoginPolicy, user_pk: int, user_id: str, now_us: int
) -> Lockout | None:
    """Count one failed sign-in (inside a write transaction); the lockout it causes, or None.

    Returns the remaining lockout when the account was already locked: a
    guess that raced past the first check is refused all the same.
    """
    row = _locked_row(db, user_pk)
    if row is None:
        # A concurrent first failure may insert too: the unique user_id makes
        # one of us retry (write_transaction), and the retry sees the row.
        row = LoginThrottle.create(
            user=user_pk, failures=0, window_start_us=now_us, locked_until_us=0, lockouts=0
        )
    if row.locked_until_us > now_us:
        remaining = (row.locked_until_us - now_us) / _US
        audit.record(
            db,
            actor,
            "login.locked",
            audit.REFUSED,
            subject=user_id,
            summary={"retry_after_s": round(remaining)},
        )
        return Lockout(remaining, started=False)
    in_window = row.failures > 0 and now_us - row.window_start_us < policy.window_s * _US
    failures = row.failures + 1 if in_window else 1
    window_start = row.window_start_us if in_window else now_us
    quiet = row.lockouts and now_us - row.locked_until_us > policy.lockout_max_s * _US
    lockouts = 0 if quiet else row.lockouts
    audit.record(
        db, actor, "login.failure", audit.REFUSED, subject=user_id, summary={"failures_in_window": failures}
    )
    update = {"failures": failures, "window_start_us": window_start, "lockouts": lockouts}
    lockout_s = 0
    if failures >= policy.max_failures:
        lockouts += 1
        lockout_s = policy.lockout_for(lockouts)
        update = {"failures": 0, "window_start_us": now_us, "lockouts": lockouts}
        update["locked_until_us"] = now_us + lockout_s * _US
        audit.record(
            db,
            actor,
            "login.lockout",
            audit.REFUSED,
            subject=user_id,
            summary={"failures": failures, "lockout_number": lockouts, "lockout_s": lockout_s},
        )
    LoginThrottle.update(**update).where(LoginThrottle.id == row.id).execute()
    return Lockout(float(lockout_s), started=True) if lockout_s else None


def clear_on_success(db: LendingDatabase, actor: Actor, user_pk: int, user_id: str, now_us: int) -> float:
    """Reset the count after a correct password (inside a write transaction).

    Returns the remaining lockout instead, refusing the sign-in, when the
    account was locked meanwhile (a correct guess racing the lockout).
    """
    row = _locked_row(db, user_pk)
    if row is None:
        return 0.0
    if row.locked_until_us > now_us:
        remaining = (row.locked_until_us - now_us) / _US
        audit.record(
            db,
            actor,
            "login.locked",
            audit.REFUSED,
            subject=user_id,
            summary={"retry_after_s": round(remaining)},
        )
        return remaining
    if row.failures or row.lockouts or row.locked_until_us:
        LoginThrottle.update(failures=0, lockouts=0, locked_until_us=0).where(
            LoginThrottle.id == row.id
        ).execute()
    return 0.0
