"""AuthCore: registration, sign-in with lockout, rotating refresh tokens, logout, resolving callers.

Token families: every login starts a family (a row in ``token_family``) whose
``current_jti`` names the one refresh token that may be used next. A refresh
compares-and-sets it in one write transaction; presenting any older token of
the family is reuse (a stolen token, or a client replaying one), and revokes
the whole family. Access tokens carry the family too, so logout and reuse
end them as well, within ``cache_s`` seconds in other processes (at once in
the process that revoked).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from lending_grpc.core import audit, fields, throttle
from lending_grpc.core.clock import Clock
from lending_grpc.core.crypto import Sealer
from lending_grpc.core.errors import (
    AccountLocked,
    AlreadyExists,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from lending_grpc.core.passwords import Passwords
from lending_grpc.core.plural import count
from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.storage.models import TokenFamily, User
from lending_grpc.core.tokens import ACCESS, REFRESH, TokenSigner
from lending_grpc.core.views import Actor, Principal, TokenPair, UserView

BAD_CREDENTIALS = "invalid username or password"
LOCKED = "too many failed sign-ins: this account is locked for {seconds}"
_MAX_CACHED_FAMILIES = 100_000
_REFRESH_REFUSALS = {
    "unknown": "the refresh token's session does not exist",
    "revoked": "the refresh token's session was revoked (logout, reuse or erasure)",
    "reuse": "this refresh token was already used: its session is now revoked; sign in again",
    "blocked": "the account is blocked",
}


def _locked(seconds: float) -> AccountLocked:
    return AccountLocked(LOCKED.format(seconds=count(max(1, round(seconds)), "more second")), seconds)


class AuthCore:
    """Users, their credentials and their sessions (token families)."""

    def __init__(
        self,
        db: LendingDatabase,
        clock: Clock,
        passwords: Passwords,
        signer: TokenSigner,
        sealer: Sealer,
        *,
        policy: throttle.LoginPolicy | None = None,
        cache_s: float = 5.0,
        on_lockout: Callable[[], None] | None = None,
    ) -> None:
        """``on_lockout`` is told each time failed sign-ins lock an account (the lockout metric)."""
        self._db = db
        self._clock = clock
        self._passwords = passwords
        self._signer = signer
        self._sealer = sealer
        self._policy = policy or throttle.LoginPolicy()
        self._cache_s = cache_s
        self._on_lockout = on_lockout or (lambda: None)
        # family id -> (monotonic expiry, principal). Roles, erasure and
        # revocation made by another process show after at most cache_s.
        self._sessions: dict[str, tuple[float, Principal]] = {}

    # -- accounts --------------------------------------------------------------

    def register(self, actor: Actor, username: str, password: str, email: str) -> UserView:
        """Create an account; the username is unique case-insensitively; the email is stored sealed."""
        username = fields.username(username)
        password = fields.password(password)
        email = fields.email(email)
        key = fields.username_key(username)
        if User.get_or_none(User.username_key == key) is not None:
            raise AlreadyExists(f"username {username!r} is taken")
        password_hash = self._passwords.hash(password)  # slow: outside the write lock
        user_id = str(uuid.uuid4())
        sealed = self._sealer.seal(email, user_id)

        def create() -> UserView:
            if User.get_or_none(User.username_key == key) is not None:
                raise AlreadyExists(f"username {username!r} is taken")
            row = User.create(
                user_id=user_id,
                username=username,
                username_key=key,
                email="",
                email_sealed=sealed,
                password_hash=password_hash,
                create_time_us=self._clock.now_us(),
            )
            audit.record(self._db, actor.acting_as(user_id), "user.register", subject=user_id)
            return UserView(row.user_id, row.username, email, row.create_time_us)

        return self._db.write_transaction(create)

    # -- sign-in ---------------------------------------------------------------

    def login(self, actor: Actor, username: str, password: str) -> TokenPair:
        """Tokens for valid credentials; one and the same error for unknown user and wrong password.

        A locked account is refused (AccountLocked) whatever the password,
        without spending a hash on it.
        """
        if not username:
            raise InvalidArgument("username", "is required")
        if not password:
            raise InvalidArgument("password", "is required")
        row = None
        # A name no account can have is not looked up (PostgreSQL refuses NUL bytes, for one),
        # but it still costs a hash below, like any unknown user.
        if fields.USERNAME_RE.fullmatch(username) and len(password) <= fields.MAX_PASSWORD_CHARS:
            row = User.get_or_none(User.username_key == fields.username_key(username))
        if row is not None and row.erased_time_us is not None:
            row = None  # blocked: exactly like an unknown user
        if row is not None:
            remaining = throttle.remaining_lockout_s(row.id, self._clock.now_us())
            if remaining:
                audit.record_alone(
                    self._db,
                    actor,
                    "login.locked",
                    audit.REFUSED,
                    subject=row.user_id,
                    summary={"retry_after_s": round(remaining)},
                )
                raise _locked(remaining)
        if not self._passwords.verify(row.password_hash if row else None, password):
            if row is None:
                audit.record_alone(
                    self._db, actor, "login.failure", audit.REFUSED, summary={"reason": "unknown_user"}
                )
                raise Unauthenticated(BAD_CREDENTIALS)
            lockout = self._db.write_transaction(
                lambda: throttle.record_failure(
                    self._db, actor, self._policy, row.id, row.user_id, self._clock.now_us()
                ),
            )
            if lockout is not None:
                if lockout.started:
                    self._on_lockout()
                raise _locked(lockout.seconds)
            raise Unauthenticated(BAD_CREDENTIALS)
        if self._passwords.needs_rehash(row.password_hash):
            # Hashing parameters were raised since this hash was made.
            new_hash = self._passwords.hash(password)
            self._db.write_transaction(
                lambda: User.update(password_hash=new_hash).where(User.id == row.id).execute(),
            )
        family, jti = uuid.uuid4().hex, uuid.uuid4().hex

        def start_session() -> float:
            now = self._clock.now_us()
            remaining = throttle.clear_on_success(self._db, actor, row.id, row.user_id, now)
            if remaining:
                return remaining
            TokenFamily.create(family_id=family, user=row.id, current_jti=jti, create_time_us=now)
            audit.record(
                self._db,
                actor.acting_as(row.user_id),
                "login.success",
                subject=row.user_id,
                summary={"family": family},
            )
            return 0.0

        remaining = self._db.write_transaction(start_session)
        if remaining:
            raise _locked(remaining)
        return self._issue(row.user_id, family, jti)

    # -- sessions --------------------------------------------------------------

    def refresh(self, actor: Actor, refresh_token: str) -> TokenPair:
        """Rotate: a new pair for the family's current refresh token; reuse revokes the family."""
        if not refresh_token:
            raise InvalidArgument("refresh_token", "is required")
        claims = self._signer.verify(refresh_token, REFRESH)
        new_jti = uuid.uuid4().hex

        def rotate() -> str:
            now = self._clock.now_us()
            query = (
                TokenFamily.select(TokenFamily, User.user_id, User.erased_time_us)
                .join(User)
                .where(TokenFamily.family_id == claims.family)
            )
            row = self._db.lock_rows(query).first()
            summary = {"family": claims.family}
            if row is None or row.user.user_id != claims.user_id:
                refusal = "unknown"
            elif row.user.erased_time_us is not None:
                refusal = "blocked"
            elif row.revoked_time_us is not None:
                refusal = "revoked"
            elif row.current_jti != claims.token_id:
                # An older token of the family: whoever holds it, the family is no longer safe.
                TokenFamily.update(revoked_time_us=now, revoked_reason="reuse").where(
                    TokenFamily.id == row.id
                ).execute()
                audit.record(
                    self._db,
                    actor,
                    "token.reuse_detected",
                    audit.REFUSED,
                    subject=row.user.user_id,
                    summary=summary,
                )
                return "reuse"
            else:
                TokenFamily.update(current_jti=new_jti).where(
                    (TokenFamily.id == row.id) & (TokenFamily.current_jti == claims.token_id)
                ).execute()
                audit.record(
                    self._db,
                    actor.acting_as(row.user.user_id),
                    "token.refresh",
                    subject=row.user.user_id,
                    summary=summary,
                )
                return ""
            audit.record(
                self._db,
                actor,
                "token.refresh",
                audit.REFUSED,
                subject=claims.user_id,
                summary={**summary, "reason": refusal},
            )
            return refusal

        refusal = self._db.write_transaction(rotate)
        if refusal:
            self._sessions.pop(claims.family, None)
            raise Unauthenticated(_REFRESH_REFUSALS[refusal])
        return self._issue(claims.user_id, claims.family, new_jti)

    def logout(self, actor: Actor) -> None:
        """Revoke the caller's token family: its refresh token and (after the cache) its access tokens."""
        caller = actor.user

        def revoke() -> None:
            now = self._clock.now_us()
            TokenFamily.update(revoked_time_us=now, revoked_reason="logout").where(
                (TokenFamily.family_id == caller.family)
                & (TokenFamily.user == caller.id)
                & TokenFamily.revoked_time_us.is_null()
            ).execute()
            audit.record(
                self._db, actor, "token.logout", subject=caller.user_id, summary={"family": caller.family}
            )

        self._db.write_transaction(revoke)
        self._sessions.pop(caller.family, None)

    def authenticate(self, access_token: str) -> tuple[Principal, float]:
        """The caller behind a valid access token of a live session, and when the token expires.

        The expiry is in Unix seconds (a long stream ends then). Unauthenticated
        when the token is invalid, expired, or its session was revoked.
        """
        claims = self._signer.verify(access_token, ACCESS)
        cached = self._sessions.get(claims.family)
        if cached is not None and cached[0] > time.monotonic() and cached[1].user_id == claims.user_id:
            return cached[1], claims.expires_at
        row = (
            TokenFamily.select(
                TokenFamily.revoked_time_us, User.id, User.user_id, User.role, User.erased_time_us
            )
            .join(User)
            .where(TokenFamily.family_id == claims.family)
            .first()
        )
        if row is None or row.user.user_id != claims.user_id:
            raise Unauthenticated("the token's user or session does not exist")
        if row.user.erased_time_us is not None:
            raise Unauthenticated("the account is blocked")
        if row.revoked_time_us is not None:
            raise Unauthenticated("the token's session was revoked (logout, reuse or erasure)")
        principal = Principal(row.user.id, row.user.user_id, row.user.role, claims.family)
        if self._cache_s > 0:
            if len(self._sessions) >= _MAX_CACHED_FAMILIES:
                self._sessions.clear()
            self._sessions[claims.family] = (time.monotonic() + self._cache_s, principal)
        return principal, claims.expires_at

    def require_operator(self, actor: Actor, what: str) -> None:
        """PermissionDenied (audited) unless the caller is an operator; ``what`` names the path."""
        caller = actor.user
        if caller.is_operator:
            return
        audit.record_alone(
            self._db,
            actor,
            "access.denied",
            audit.DENIED,
            subject=caller.user_id,
            summary={"needs": "operator", "what": what},
        )
        raise PermissionDenied(f"{what} is for operators only")

    def principal(self, user_id: str) -> Principal:
        """Look up a user by public id (no session); Unauthenticated when there is none."""
        row = User.select(User.id, User.user_id, User.role).where(User.user_id == user_id).first()
        if row is None:
            raise Unauthenticated("the token's user does not exist")
        return Principal(row.id, row.user_id, row.role)

    def _issue(self, user_id: str, family: str, refresh_jti: str) -> TokenPair:
        return TokenPair(
            access_token=self._signer.issue(user_id, ACCESS, family=family),
            refresh_token=self._signer.issue(user_id, REFRESH, family=family, token_id=refresh_jti),
            expires_in=self._signer.access_ttl_s,
            refresh_expires_in=self._signer.refresh_ttl_s,
        )
