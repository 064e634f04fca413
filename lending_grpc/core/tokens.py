"""JWT access and refresh tokens: HS256 only, every registered claim required and checked."""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt

from lending_grpc.core.errors import Unauthenticated

ALGORITHM = "HS256"
ISSUER = "lending-grpc"
AUDIENCE = "lending-grpc"
ACCESS = "access"
REFRESH = "refresh"
MIN_KEY_BYTES = 32
_WRONG_TYPE = {
    ACCESS: "an access token is required here",
    REFRESH: "a refresh token is required here",
}
# `fam`: the refresh-token family (one per login) both token types belong to,
# so that revoking a family (logout, reuse) ends its access tokens too.
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud", "jti", "typ", "fam"]
_MAX_REMEMBERED = 100_000  # verified tokens kept; cleared wholesale when full


class WeakSecretKey(ValueError):
    """The signing key is too short to be safe for HS256."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims the service uses."""

    user_id: str
    token_id: str  # the jti: a family's current refresh token is named by it
    family: str  # the fam claim: the login this token descends from
    expires_at: float  # the exp claim: Unix seconds


class TokenSigner:
    """Issues and verifies tokens with one secret key; the algorithm is pinned to HS256."""

    def __init__(self, key: bytes, *, access_ttl_s: int = 900, refresh_ttl_s: int = 7 * 86400) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise WeakSecretKey(f"the JWT secret key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        # Verifying with PyJWT costs ~50 us per call and a client sends the same
        # access token for 15 minutes: remember tokens that verified, with their
        # expiry, which is checked again on every use (dict operations are atomic).
        self._verified: dict[tuple[str, str], tuple[Claims, float]] = {}

    def issue(self, user_id: str, token_type: str, *, family: str = "", token_id: str = "") -> str:
        """A signed token of ``token_type`` (access or refresh) for ``user_id`` in ``family``.

        ``family`` and ``token_id`` (the jti) default to fresh random ids.
        """
        now = int(time.time())
        ttl = self.access_ttl_s if token_type == ACCESS else self.refresh_ttl_s
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": token_id or uuid.uuid4().hex,
            "typ": token_type,
            "fam": family or uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str, expected_type: str) -> Claims:
        """The claims of a valid token of ``expected_type``, else Unauthenticated."""
        known = self._verified.get((token, expected_type))
        if known is not None:
            claims, expires = known
            # PyJWT's own rule: expired once exp <= now.
            if expires > time.time():
                return claims
            self._verified.pop((token, expected_type), None)
            raise Unauthenticated("the token has expired")
        return self._verify(token, expected_type)

    def _verify(self, token: str, expected_type: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                audience=AUDIENCE,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is malformed or its signature is invalid") from None
        if claims.get("typ") != expected_type:
            raise Unauthenticated(_WRONG_TYPE[expected_type])
        if not all(isinstance(claims[name], str) for name in ("sub", "jti", "fam")):
            raise Unauthenticated("the token is malformed or its signature is invalid")
        verified = Claims(claims["sub"], claims["jti"], claims["fam"], float(claims["exp"]))
        if len(self._verified) >= _MAX_REMEMBERED:
            self._verified.clear()
        self._verified[(token, expected_type)] = (verified, float(claims["exp"]))
        return verified
