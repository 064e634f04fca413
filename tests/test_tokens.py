"""TokenSigner: HS256 only, every claim required, access and refresh kept apart."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from lending_grpc.core.errors import Unauthenticated
from lending_grpc.core.tokens import (
    ACCESS,
    AUDIENCE,
    ISSUER,
    REFRESH,
    Claims,
    TokenSigner,
    WeakSecretKey,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(KEY, access_ttl_s=900, refresh_ttl_s=7 * 86400)


def claims(**overrides) -> dict:
    now = int(time.time())
    values = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "typ": ACCESS,
        "fam": uuid.uuid4().hex,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def forge(payload: dict, key: bytes = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- keys --------------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", b"short", b"x" * 31])
def test_refuses_short_keys(key):
    with pytest.raises(WeakSecretKey):
        TokenSigner(key)
    assert issubclass(WeakSecretKey, ValueError)


def test_accepts_32_byte_key():
    TokenSigner(b"x" * 32)
    TokenSigner(b"x" * 64)


# -- round trip and types ---------------------------------------------------------------


def test_issue_and_verify_access(signer):
    before = int(time.time())
    token = signer.issue("user-1", ACCESS)
    got = signer.verify(token, ACCESS)
    assert isinstance(got, Claims)
    assert got.user_id == "user-1" and len(got.token_id) == 32
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    raw = jwt.decode(token, KEY, algorithms=["HS256"], audience=AUDIENCE)
    assert raw["iss"] == ISSUER and raw["typ"] == ACCESS and raw["sub"] == "user-1"
    assert raw["exp"] - raw["iat"] == 900
    assert before + 900 <= raw["exp"] <= int(time.time()) + 900
    assert raw["jti"] == got.token_id


def test_issue_and_verify_refresh(signer):
    token = signer.issue("user-1", REFRESH)
    got = signer.verify(token, REFRESH)
    assert got.user_id == "user-1"
    raw = jwt.decode(token, KEY, algorithms=["HS256"], audience=AUDIENCE)
    assert raw["exp"] - raw["iat"] == 7 * 86400


def test_token_ids_are_unique(signer):
    a = signer.verify(signer.issue("u", ACCESS), ACCESS)
    b = signer.verify(signer.issue("u", ACCESS), ACCESS)
    assert a.token_id != b.token_id


def test_refresh_token_is_not_an_access_token(signer):
    with pytest.raises(Unauthenticated) as info:
        signer.verify(signer.issue("user-1", REFRESH), ACCESS)
    assert "access token is required" in info.value.message


def test_access_token_is_not_a_refresh_token(signer):
    with pytest.raises(Unauthenticated) as info:
        signer.verify(signer.issue("user-1", ACCESS), REFRESH)
    assert "refresh token is required" in info.value.message


@pytest.mark.parametrize("typ", ["", "Access", "id", "refresh "])
def test_unknown_type_is_refused(signer, typ):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(typ=typ)), ACCESS)


def test_forged_with_right_key_and_all_claims_is_accepted(signer):
    # the baseline the refusals below differ from by one thing only
    assert signer.verify(forge(claims()), ACCESS).user_id == "user-1"


# -- expiry and time -------------------------------------------------------------------


def test_expired_token_is_refused(signer):
    now = int(time.time())
    token = forge(claims(iat=now - 1000, nbf=now - 1000, exp=now - 10))
    with pytest.raises(Unauthenticated) as info:
        signer.verify(token, ACCESS)
    assert "expired" in info.value.message


def test_expired_by_signer_ttl():
    signer = TokenSigner(KEY, access_ttl_s=-5)
    with pytest.raises(Unauthenticated) as info:
        signer.verify(signer.issue("u", ACCESS), ACCESS)
    assert "expired" in info.value.message


def test_a_remembered_token_still_expires(signer, monkeypatch):
    now = int(time.time())
    token = forge(claims(iat=now, nbf=now, exp=now + 60))
    assert signer.verify(token, ACCESS).user_id == "user-1"
    assert signer.verify(token, ACCESS).user_id == "user-1"  # answered from the verified tokens
    monkeypatch.setattr(time, "time", lambda: now + 60.0)
    with pytest.raises(Unauthenticated) as info:
        signer.verify(token, ACCESS)
    assert "expired" in info.value.message


def test_a_remembered_token_keeps_its_type(signer):
    token = signer.issue("user-1", ACCESS)
    signer.verify(token, ACCESS)
    with pytest.raises(Unauthenticated) as info:
        signer.verify(token, REFRESH)
    assert "refresh token is required" in info.value.message


def test_not_yet_valid_is_refused(signer):
    now = int(time.time())
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(nbf=now + 3600)), ACCESS)


# -- keys and algorithms -----------------------------------------------------------------


def test_wrong_key_is_refused(signer):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(), key=OTHER_KEY), ACCESS)
    other = TokenSigner(OTHER_KEY)
    with pytest.raises(Unauthenticated):
        signer.verify(other.issue("user-1", ACCESS), ACCESS)


def test_alg_none_is_refused(signer):
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        with pytest.raises(Unauthenticated):
            signer.verify(token, ACCESS)


def test_alg_none_via_pyjwt_is_refused(signer):
    token = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(Unauthenticated):
        signer.verify(token, ACCESS)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_other_hmac_algorithms_are_refused(signer, algorithm):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(), key=b"k" * 64, algorithm=algorithm), ACCESS)
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(), key=KEY, algorithm=algorithm), ACCESS)


def test_header_alg_swapped_keeps_signature_invalid(signer):
    good = signer.issue("user-1", ACCESS)
    _, payload, signature = good.split(".")
    header = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    with pytest.raises(Unauthenticated):
        signer.verify(f"{header}.{payload}.{signature}", ACCESS)


def test_tampered_payload_is_refused(signer):
    good = signer.issue("user-1", ACCESS)
    header, _, signature = good.split(".")
    payload = b64(json.dumps(claims(sub="user-2")).encode())
    with pytest.raises(Unauthenticated):
        signer.verify(f"{header}.{payload}.{signature}", ACCESS)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "....", "Bearer x.y.z", "\x00" * 10])
def test_garbage_is_refused(signer, token):
    with pytest.raises(Unauthenticated):
        signer.verify(token, ACCESS)


# -- claims ----------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "iss", "aud", "jti", "typ", "fam"])
def test_missing_claim_is_refused(signer, missing):
    payload = claims()
    del payload[missing]
    with pytest.raises(Unauthenticated):
        signer.verify(forge(payload), ACCESS)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(iss="someone-else"),
        dict(aud="someone-else"),
        dict(aud=["someone-else"]),
        dict(sub=123),
        dict(jti=123),
        dict(fam=123),
        dict(exp="tomorrow"),
        dict(iat="now"),
    ],
)
def test_wrong_claims_are_refused(signer, overrides):
    with pytest.raises(Unauthenticated):
        signer.verify(forge(claims(**overrides)), ACCESS)
