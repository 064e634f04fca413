"""JWT access and refresh tokens: HS256 only, every registered claim required and checked.

Keys rotate without logging anyone out: a signer holds a list of keys, the
first signs, all of them verify. Every token names its signing key in the
``kid`` header (``key_id``: the first 8 hex digits of the key's SHA-256), so a
token is checked against that key alone and one signed with a key that is no
longer listed is refused. Tokens issued before key ids existed carry no
``kid``; they are checked against each listed key, newest first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from collections.abc import Sequence

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
MAX_KEYS = 16  # a token without kid is tried against each: keep that bounded


class WeakSecretKey(ValueError):
    """The signing key is too short to be safe for HS256, or the key list is unusable."""


def key_id(key: bytes) -> str:
    """The ``kid`` of tokens signed with ``key``: the first 8 hex digits of its SHA-256.

    ``printf %s "$KEY" | sha256sum | cut -c1-8`` gives the same, so an operator
    can tell which key is which without seeing it in a log.
    """
    return hashlib.sha256(key).hexdigest()[:8]


def check_keys(keys: Sequence[bytes]) -> tuple[str, ...]:
    """The key ids of ``keys`` (the signing key first), or WeakSecretKey when they cannot be used."""
    return _KeyRing.of(keys).ids


@dataclasses.dataclass(frozen=True, slots=True)
class _KeyRing:
    """The keys in use: ``keys[0]`` signs; ``by_id`` verifies."""

    keys: tuple[bytes, ...]
    ids: tuple[str, ...]
    by_id: dict[str, bytes]

    @classmethod
    def of(cls, keys: Sequence[bytes]) -> _KeyRing:
        keys = tuple(keys)
        if not keys:
            raise WeakSecretKey("no JWT secret key given")
        if len(keys) > MAX_KEYS:
            raise WeakSecretKey(f"at most {MAX_KEYS} JWT secret keys may be listed")
        for number, key in enumerate(keys, 1):
            if len(key) < MIN_KEY_BYTES:
                where = "" if len(keys) == 1 else f" (key {number})"
                raise WeakSecretKey(f"the JWT secret key must be at least {MIN_KEY_BYTES} bytes{where}")
        ids = tuple(key_id(key) for key in keys)
        if len(set(keys)) != len(keys):
            raise WeakSecretKey("a JWT secret key is listed twice")
        if len(set(ids)) != len(ids):
            raise WeakSecretKey("two JWT secret keys share a key id: generate a new key")
        return cls(keys, ids, dict(zip(ids, keys, strict=True)))


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims the service uses."""

    user_id: str
    token_id: str  # the jti: a family's current refresh token is named by it
    family: str  # the fam claim: the login this token descends from
    expires_at: float  # the exp claim: Unix seconds


class TokenSigner:
    """Issues and verifies tokens; the algorithm is pinned to HS256.

    ``key`` is one key, or several: the first signs, every one verifies
    (``use_keys`` swaps them while serving).
    """

    def __init__(
        self, key: bytes | Sequence[bytes], *, access_ttl_s: int = 900, refresh_ttl_s: int = 7 * 86400
    ) -> None:
        self._ring = _KeyRing.of([key] if isinstance(key, bytes) else key)
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        # Verifying with PyJWT costs ~50 us per call and a client sends the same
        # access token for 15 minutes: remember tokens that verified, with their
        # expiry, which is checked again on every use (dict operations are atomic).
        self._verified: dict[tuple[str, str], tuple[Claims, float]] = {}

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the keys in use, the signing key's first."""
        return self._ring.ids

    def use_keys(self, keys: Sequence[bytes]) -> None:
        """From now on sign with ``keys[0]`` and verify with any of ``keys`` (WeakSecretKey if unusable).

        One attribute swap, so a concurrent call sees the old keys or the new
        ones, never a mix. Remembered tokens are forgotten: one signed with a
        key no longer listed must be refused from now on.
        """
        ring = _KeyRing.of(keys)
        self._ring = ring
        self._verified = {}

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
        ring = self._ring
        return jwt.encode(claims, ring.keys[0], algorithm=ALGORITHM, headers={"kid": ring.ids[0]})

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
        ring, verified_tokens = self._ring, self._verified  # one generation throughout
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise Unauthenticated("the token is malformed or its signature is invalid") from None
        if kid is None:  # issued before key ids: whichever listed key signed it
            candidates = ring.keys
        elif isinstance(kid, str) and kid in ring.by_id:
            candidates = (ring.by_id[kid],)
        else:
            raise Unauthenticated("the token was signed with a key this server does not accept")
        claims = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[ALGORITHM],
                    issuer=ISSUER,
                    audience=AUDIENCE,
                    options={"require": _REQUIRED_CLAIMS},
                )
                break
            except jwt.InvalidSignatureError:
                continue  # PyJWT checks the signature first: only then expiry and claims
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("the token has expired") from None
            except jwt.PyJWTError:
                raise Unauthenticated("the token is malformed or its signature is invalid") from None
        if claims is None:
            raise Unauthenticated("the token is malformed or its signature is invalid")
        if claims.get("typ") != expected_type:
            raise Unauthenticated(_WRONG_TYPE[expected_type])
        if not all(isinstance(claims[name], str) for name in ("sub", "jti", "fam")):
            raise Unauthenticated("the token is malformed or its signature is invalid")
        verified = Claims(claims["sub"], claims["jti"], claims["fam"], float(claims["exp"]))
        if len(verified_tokens) >= _MAX_REMEMBERED:
            verified_tokens.clear()
        verified_tokens[(token, expected_type)] = (verified, float(claims["exp"]))
        return verified
