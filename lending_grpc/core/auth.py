"""AuthCore: registration, login, token refresh and resolving a token to its user."""

from __future__ import annotations

import uuid

from peewee import Database

from lending_grpc.core import fields
from lending_grpc.core.clock import Clock
from lending_grpc.core.database import run_in_write_transaction
from lending_grpc.core.errors import AlreadyExists, InvalidArgument, Unauthenticated
from lending_grpc.core.models import User
from lending_grpc.core.passwords import Passwords
from lending_grpc.core.tokens import ACCESS, REFRESH, TokenSigner
from lending_grpc.core.views import Principal, TokenPair, UserView

BAD_CREDENTIALS = "invalid username or password"
_MAX_CACHED_PRINCIPALS = 100_000


class AuthCore:
    """Users and their credentials."""

    def __init__(self, db: Database, clock: Clock, passwords: Passwords, signer: TokenSigner) -> None:
        self._db = db
        self._clock = clock
        self._passwords = passwords
        self._signer = signer
        # Public-to-internal id mapping never changes, so hits are cached
        # (dict operations are atomic under the GIL); misses are not.
        self._principals: dict[str, Principal] = {}

    def register(self, username: str, password: str, email: str) -> UserView:
        """Create an account; the username is unique case-insensitively."""
        username = fields.username(username)
        password = fields.password(password)
        email = fields.email(email)
        key = fields.username_key(username)
        if User.get_or_none(User.username_key == key) is not None:
            raise AlreadyExists(f"username {username!r} is taken")
        password_hash = self._passwords.hash(password)  # slow: outside the write lock

        def create() -> UserView:
            if User.get_or_none(User.username_key == key) is not None:
                raise AlreadyExists(f"username {username!r} is taken")
            row = User.create(
                user_id=str(uuid.uuid4()),
                username=username,
                username_key=key,
                email=email,
                password_hash=password_hash,
                create_time_us=self._clock.now_us(),
            )
            return UserView(row.user_id, row.username, row.email, row.create_time_us)

        return run_in_write_transaction(self._db, create)

    def login(self, username: str, password: str) -> TokenPair:
        """Tokens for valid credentials; one and the same error for unknown user and wrong password."""
        if not username:
            raise InvalidArgument("username", "is required")
        if not password:
            raise InvalidArgument("password", "is required")
        row = None
        # A name no account can have is not looked up (PostgreSQL refuses NUL bytes, for one),
        # but it still costs a hash below, like any unknown user.
        if fields.USERNAME_RE.fullmatch(username) and len(password) <= fields.MAX_PASSWORD_CHARS:
            row = User.get_or_none(User.username_key == fields.username_key(username))
        if not self._passwords.verify(row.password_hash if row else None, password):
            raise Unauthenticated(BAD_CREDENTIALS)
        if self._passwords.needs_rehash(row.password_hash):
            # Hashing parameters were raised since this hash was made.
            new_hash = self._passwords.hash(password)
            run_in_write_transaction(
                self._db,
                lambda: User.update(password_hash=new_hash).where(User.id == row.id).execute(),
            )
        return self._issue(row.user_id)

    def refresh(self, refresh_token: str) -> TokenPair:
        """A new token pair for a valid refresh token of an existing user."""
        if not refresh_token:
            raise InvalidArgument("refresh_token", "is required")
        claims = self._signer.verify(refresh_token, REFRESH)
        self.principal(claims.user_id)
        return self._issue(claims.user_id)

    def authenticate(self, access_token: str) -> Principal:
        """The caller behind a valid access token, else Unauthenticated."""
        claims = self._signer.verify(access_token, ACCESS)
        return self.principal(claims.user_id)

    def principal(self, user_id: str) -> Principal:
        """Resolve a public user id; Unauthenticated when the user does not exist."""
        principal = self._principals.get(user_id)
        if principal is None:
            row = User.select(User.id, User.user_id).where(User.user_id == user_id).first()
            if row is None:
                raise Unauthenticated("the token's user does not exist")
            if len(self._principals) >= _MAX_CACHED_PRINCIPALS:
                self._principals.clear()
            principal = self._principals[user_id] = Principal(row.id, row.user_id)
        return principal

    def _issue(self, user_id: str) -> TokenPair:
        return TokenPair(
            access_token=self._signer.issue(user_id, ACCESS),
            refresh_token=self._signer.issue(user_id, REFRESH),
            expires_in=self._signer.access_ttl_s,
            refresh_expires_in=self._signer.refresh_ttl_s,
        )
