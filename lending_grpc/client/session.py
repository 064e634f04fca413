"""The login session: holds the token pair and keeps the access token fresh.

Before each BillingService call the session hands out a valid access token:
shortly before it expires it is swapped with the refresh token; when the
refresh token has expired too and the password is known, the session logs in
again. Thread-safe: concurrent calls share one refresh.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from lending.v1 import auth_pb2, auth_pb2_grpc

from lending_grpc.client import exceptions, from_messages
from lending_grpc.client.types import Tokens

# Refresh this long before the access token expires, so a call never leaves
# with a token that expires in flight (and small clock skew does not hurt).
REFRESH_MARGIN_SECONDS = 30.0


class Session:
    """Token pair + how to renew it. `on_tokens` is called with every new pair (to persist it)."""

    def __init__(
        self,
        auth: auth_pb2_grpc.AuthServiceStub,
        timeout: float,
        *,
        tokens: Tokens | None = None,
        username: str | None = None,
        password: str | None = None,
        on_tokens: Callable[[Tokens], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._timeout = timeout
        self._tokens = tokens
        self._username = username
        self._password = password
        self._on_tokens = on_tokens
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def tokens(self) -> Tokens | None:
        return self._tokens

    def login(self, username: str, password: str, timeout: float | None = None) -> Tokens:
        """Log in and remember the credentials, so the session can log in again when refresh expires."""
        with self._lock:
            request = auth_pb2.LoginRequest(username=username, password=password)
            tokens = self._store(self._call(self._auth.Login, request, timeout))
            # Remembered only once they worked: a typo must not be replayed on every renewal.
            self._username, self._password = username, password
            return tokens

    def refresh(self, timeout: float | None = None) -> Tokens:
        """Swap the refresh token for a new pair now."""
        with self._lock:
            return self._refresh(timeout)

    def forget(self) -> None:
        """Drop the tokens and the credentials: the session cannot renew itself any more."""
        with self._lock:
            self._tokens = None
            self._username = self._password = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The `authorization` metadata with a fresh access token, renewing it first if needed."""
        with self._lock:
            tokens = self._tokens
            if tokens is None or self._clock() >= tokens.access_expires_at - REFRESH_MARGIN_SECONDS:
                tokens = self._renew()
            return (("authorization", f"Bearer {tokens.access_token}"),)

    def renew_after_rejection(self, rejected: tuple[tuple[str, str], ...]) -> bool:
        """The server refused the access token we sent (revoked, server key changed, clock skew):
        renew once. False when there is nothing to renew with; the caller then gives up."""
        with self._lock:
            current = self._tokens
            if current is not None and rejected != (("authorization", f"Bearer {current.access_token}"),):
                return True  # another thread already renewed it
            if current is None and self._password is None:
                return False
            try:
                self._renew(force_refresh=True)
            except exceptions.Unauthenticated:
                return False
            return True

    # -- private, called with the lock held --

    def _renew(self, force_refresh: bool = False) -> Tokens:
        tokens = self._tokens
        now = self._clock()
        if tokens is not None and (force_refresh or now < tokens.refresh_expires_at - REFRESH_MARGIN_SECONDS):
            try:
                return self._refresh(None)
            except exceptions.Unauthenticated:
                if self._password is None:
                    raise exceptions.NotLoggedIn("the session has expired: log in again") from None
        if self._password is None or self._username is None:
            if tokens is None:
                raise exceptions.NotLoggedIn()
            raise exceptions.NotLoggedIn("the session has expired: log in again")
        return self._login(None)

    def _login(self, timeout: float | None) -> Tokens:
        request = auth_pb2.LoginRequest(username=self._username or "", password=self._password or "")
        return self._store(self._call(self._auth.Login, request, timeout))

    def _refresh(self, timeout: float | None) -> Tokens:
        if self._tokens is None:
            raise exceptions.NotLoggedIn()
        request = auth_pb2.RefreshTokenRequest(refresh_token=self._tokens.refresh_token)
        return self._store(self._call(self._auth.RefreshToken, request, timeout))

    def _call(self, method, request, timeout: float | None):
        sent_at = self._clock()  # expiries count from when we asked: never later than the server's
        try:
            return method(request, timeout=timeout or self._timeout), sent_at
        except grpc.RpcError as err:
            raise exceptions.from_rpc_error(err) from None

    def _store(self, answer) -> Tokens:
        message, sent_at = answer
        self._tokens = from_messages.tokens(message, sent_at)
        if self._on_tokens is not None:
            self._on_tokens(self._tokens)
        return self._tokens
