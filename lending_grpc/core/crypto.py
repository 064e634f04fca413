"""Sealing personal data at rest: AES-256-GCM, a random 96-bit nonce per value, keys that rotate.

A sealed value reads ``v<version>.<base64url(nonce || ciphertext+tag)>``. The
key version lets new values use a new key while old ones still open with
the key they were sealed with. The associated data binds a value to its row
(the user id): a sealed email copied onto another user does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12


class DataKeyError(ValueError):
    """The data key setting is malformed."""


class UnsealError(ValueError):
    """A sealed value is malformed, was sealed with an unknown key, or was tampered with."""


def parse_keys(text: str) -> tuple[int, dict[int, bytes]]:
    """``[N:]KEY[,M:KEY...]`` -> (current version, {version: key}); the first key seals new values.

    Each KEY is 32 random bytes in (url-safe) base64; a key without ``N:`` is version 1.
    """
    keys: dict[int, bytes] = {}
    current = None
    for number, item in enumerate(part.strip() for part in text.split(",")):
        version_text, sep, encoded = item.rpartition(":")
        try:
            version = int(version_text) if sep else 1
        except ValueError:
            raise DataKeyError(f"key {number + 1}: the version before ':' must be a number") from None
        try:
            key = base64.urlsafe_b64decode(
                encoded.replace("+", "-").replace("/", "_") + "=" * (-len(encoded) % 4)
            )
        except (ValueError, binascii.Error):
            raise DataKeyError(f"key {number + 1}: not base64") from None
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"key {number + 1}: must be {KEY_BYTES} bytes (base64 of 32 random bytes)")
        if not 1 <= version <= 9999 or version in keys:
            raise DataKeyError(f"key {number + 1}: version {version} is out of range or repeated")
        keys[version] = key
        current = version if current is None else current
    if current is None:
        raise DataKeyError("no key given")
    return current, keys


def new_key_text() -> str:
    """A fresh random key in the format ``parse_keys`` reads."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def sealed_prefix(version: int) -> str:
    """How values sealed with key ``version`` begin."""
    return f"v{version}."


class Sealer:
    """Seals and opens short strings with the configured keys; ``use_keys`` swaps them while serving."""

    def __init__(self, current: int, keys: dict[int, bytes]) -> None:
        self._use(current, keys)

    def _use(self, current: int, keys: dict[int, bytes]) -> None:
        # One attribute: a concurrent seal sees the old keys or the new ones, never a mix.
        self._keys = (current, {version: AESGCM(key) for version, key in keys.items()})

    @classmethod
    def from_text(cls, text: str) -> Sealer:
        """A sealer for a key setting (see ``parse_keys``)."""
        return cls(*parse_keys(text))

    def use_keys(self, other: Sealer) -> None:
        """Seal with ``other``'s current key from now on and open with its keys."""
        self._keys = other._keys

    @property
    def versions(self) -> tuple[int, ...]:
        """The configured key versions, the current one first."""
        current, ciphers = self._keys
        return (current, *(version for version in ciphers if version != current))

    def seal(self, plaintext: str, associated: str) -> str:
        """``plaintext`` encrypted under the current key, bound to ``associated``."""
        current, ciphers = self._keys
        nonce = os.urandom(_NONCE_BYTES)
        body = ciphers[current].encrypt(nonce, plaintext.encode("utf-8"), associated.encode())
        return sealed_prefix(current) + base64.urlsafe_b64encode(nonce + body).decode("ascii").rstrip("=")

    def open(self, sealed: str, associated: str) -> str:
        """The plaintext of a value ``seal`` made with the same ``associated``, else UnsealError."""
        prefix, sep, encoded = sealed.partition(".")
        try:
            version = int(prefix[1:]) if prefix.startswith("v") and sep else -1
            data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, binascii.Error):
            raise UnsealError("malformed sealed value") from None
        cipher = self._keys[1].get(version)
        if cipher is None:
            raise UnsealError(f"sealed with key version {prefix[1:]!r}, which is not configured")
        try:
            plain = cipher.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], associated.encode())
        except InvalidTag:
            raise UnsealError("sealed value failed authentication (wrong key, row or tampering)") from None
        return plain.decode("utf-8")

    @property
    def current_prefix(self) -> str:
        """How values sealed with the current key begin."""
        return sealed_prefix(self._keys[0])

    def needs_reseal(self, sealed: str) -> bool:
        """Whether ``sealed`` was made with an older key than the current one."""
        return not sealed.startswith(self.current_prefix)
