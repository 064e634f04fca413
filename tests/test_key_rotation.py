"""Key rotation: key ids in tokens, and key lists whose first key signs while every key verifies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest

from lending_grpc.config import ConfigError, parse_secret_keys
from lending_grpc.core.crypto import Sealer, new_key_text
from lending_grpc.core.errors import InvalidArgument, Unauthenticated
from lending_grpc.core.pagination import PageTokens
from lending_grpc.core.tokens import ACCESS, REFRESH, TokenSigner, WeakSecretKey, key_id

OLD = b"old-jwt-signing-key-" + b"o" * 24
NEW = b"new-jwt-signing-key-" + b"n" * 24
STRANGER = b"someone-elses-jwt-key-" + b"s" * 24
DATA_1, DATA_2 = new_key_text(), new_key_text()


def kid(token: str) -> str | None:
    return jwt.get_unverified_header(token).get("kid")


def resign(token: str, key: bytes, headers: dict | None = None) -> str:
    """The same claims, signed with ``key`` under ``headers`` (a forgery, or a token from before kids)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, key, algorithm="HS256", headers=headers)


def by_hand(token: str, key: bytes, header: dict) -> str:
    """The same claims under any header at all (PyJWT refuses to write a kid that is not a string)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{token.split('.')[1]}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# -- key ids and key lists ---------------------------------------------------------------


def test_the_kid_is_the_start_of_the_keys_sha256():
    token = TokenSigner(OLD).issue("user-1", ACCESS)
    assert kid(token) == key_id(OLD) == hashlib.sha256(OLD).hexdigest()[:8]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_the_first_key_signs_and_every_listed_key_verifies():
    before = TokenSigner(OLD)
    old_access, old_refresh = before.issue("u", ACCESS), before.issue("u", REFRESH)
    signer = TokenSigner([NEW, OLD])
    assert signer.key_ids == (key_id(NEW), key_id(OLD))
    assert kid(signer.issue("u", ACCESS)) == key_id(NEW)
    assert signer.verify(old_access, ACCESS).user_id == "u"
    assert signer.verify(old_refresh, REFRESH).user_id == "u"


def test_a_token_of_an_unknown_or_retired_key_is_refused_even_when_remembered():
    signer = TokenSigner([NEW, OLD])
    old_token = TokenSigner(OLD).issue("u", ACCESS)
    assert signer.verify(old_token, ACCESS).user_id == "u"  # now remembered as verified
    with pytest.raises(Unauthenticated, match="key this server does not accept"):
        signer.verify(TokenSigner(STRANGER).issue("u", ACCESS), ACCESS)
    signer.use_keys([NEW])
    with pytest.raises(Unauthenticated, match="key this server does not accept"):
        signer.verify(old_token, ACCESS)


def test_a_kid_does_not_choose_a_key_it_was_not_signed_with():
    signer = TokenSigner([NEW, OLD])
    token = TokenSigner(OLD).issue("u", ACCESS)
    for forged in (resign(token, STRANGER, {"kid": key_id(NEW)}), resign(token, OLD, {"kid": key_id(NEW)})):
        with pytest.raises(Unauthenticated, match="signature is invalid"):
            signer.verify(forged, ACCESS)
    assert signer.verify(by_hand(token, OLD, {"alg": "HS256", "kid": key_id(OLD)}), ACCESS).user_id == "u"
    for odd_kid in (1, ["x"], None, "", key_id(STRANGER)):
        with pytest.raises(Unauthenticated):
            signer.verify(by_hand(token, OLD, {"alg": "HS256", "kid": odd_kid}), ACCESS)


def test_tokens_from_before_key_ids_verify_with_any_listed_key():
    legacy = resign(TokenSigner(OLD).issue("u", ACCESS), OLD)  # no kid, as issued before this release
    assert kid(legacy) is None
    assert TokenSigner(OLD).verify(legacy, ACCESS).user_id == "u"
    assert TokenSigner([NEW, OLD]).verify(legacy, ACCESS).user_id == "u"
    with pytest.raises(Unauthenticated, match="signature is invalid"):
        TokenSigner([NEW, STRANGER]).verify(legacy, ACCESS)


def test_an_unusable_key_list_is_refused_and_changes_nothing():
    signer = TokenSigner(OLD)
    for keys, message in [
        ([], "no JWT secret key"),
        ([NEW, b"short"], r"at least 32 bytes \(key 2\)"),
        ([NEW, NEW], "listed twice"),
        ([NEW] * 17, "at most 16"),
    ]:
        with pytest.raises(WeakSecretKey, match=message):
            signer.use_keys(keys)
    assert signer.key_ids == (key_id(OLD),)


def test_key_files_hold_one_key_per_line_and_old_single_keys_keep_their_meaning():
    assert parse_secret_keys(NEW + b"\n\n" + OLD + b"\r\n", "f") == (NEW, OLD)
    # A single line is the key as it is, spaces included (an inline key always was).
    assert parse_secret_keys(b"  " + OLD + b" ", "LENDING_SECRET_KEY") == (b"  " + OLD + b" ",)
    binary = bytes(range(256))[::-1] + b"\n\xff"  # not UTF-8: one binary key, newlines and all
    assert parse_secret_keys(binary, "f") == (binary,)
    with pytest.raises(ConfigError, match=r"keys: the JWT secret key must be at least 32 bytes \(key 2\)"):
        parse_secret_keys(NEW + b"\nshort", "keys")
    with pytest.raises(ConfigError) as raised:
        parse_secret_keys(NEW + b"\n" + NEW, "keys")
    assert NEW.decode() not in str(raised.value)


def test_page_tokens_survive_a_rotation_and_not_the_retirement_of_their_key():
    old_tokens = PageTokens(OLD)
    token = old_tokens.encode("loans|1", {"after": 5})
    rotated = PageTokens(NEW, OLD)
    assert rotated.decode(token, "loans|1") == {"after": 5}
    assert PageTokens(NEW).decode(rotated.encode("loans|1", {"after": 6}), "loans|1") == {"after": 6}
    rotated.use_keys([NEW])
    with pytest.raises(InvalidArgument):
        rotated.decode(token, "loans|1")


def test_a_sealer_swaps_its_keys_whole():
    sealer = Sealer.from_text(f"1:{DATA_1}")
    sealed_1 = sealer.seal("ada@example.com", "u1")
    sealer.use_keys(Sealer.from_text(f"2:{DATA_2},1:{DATA_1}"))
    assert sealer.versions == (2, 1)
    assert sealer.seal("bea@example.com", "u2").startswith("v2.")
    assert sealer.open(sealed_1, "u1") == "ada@example.com" and sealer.needs_reseal(sealed_1)
