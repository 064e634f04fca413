"""AIP-158 pagination: page sizes and opaque, tamper-proof keyset page tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from lending_grpc.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_MAX_TOKEN_CHARS = 512


def page_size(requested: int, field: str = "page_size") -> int:
    """0 means the default; above the maximum is lowered to it; negative is an error."""
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PageTokens:
    """Signs keyset positions so that a client cannot forge or alter them.

    Tokens are opaque by contract (AIP-158) but not encrypted: they hold only
    row ids and dates the caller is already entitled to.

    A token is bound to its ``scope`` (the method, the caller and the query):
    a token from another query or another user is refused like a forged one.

    Given several keys (the JWT keys, the signing key first), tokens are
    signed with the first and accepted from any: a key rotation does not
    break a client paging through a list.
    """

    def __init__(self, key: bytes, *older: bytes) -> None:
        self.use_keys((key, *older))

    def use_keys(self, keys: Sequence[bytes]) -> None:
        """Sign with ``keys[0]`` from now on; accept tokens signed with any of ``keys``."""
        self._keys = tuple(hashlib.sha256(b"lending-grpc page token\x00" + key).digest() for key in keys)

    @staticmethod
    def _sign(key: bytes, scope: str, payload: bytes) -> bytes:
        return hmac.new(key, scope.encode() + b"\x00" + payload, hashlib.sha256).digest()[:16]

    def encode(self, scope: str, position: dict[str, Any]) -> str:
        """Make the token that resumes ``scope`` after ``position``."""
        payload = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._sign(self._keys[0], scope, payload))}"

    def decode(self, token: str, scope: str, field: str = "page_token") -> dict[str, Any]:
        """Return the position in ``token``, or InvalidArgument if it was not issued for ``scope``."""
        invalid = InvalidArgument(field, "is not a page token this server issued for this query")
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 1:
            raise invalid
        payload_text, signature_text = token.split(".")
        try:
            payload = _unb64(payload_text)
            signature = _unb64(signature_text)
        except ValueError:
            raise invalid from None
        if not any(hmac.compare_digest(signature, self._sign(key, scope, payload)) for key in self._keys):
            raise invalid
        position = json.loads(payload)
        if not isinstance(position, dict):
            raise invalid
        return position
