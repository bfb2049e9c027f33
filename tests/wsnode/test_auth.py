"""Table tests of token and origin checks (pure), including `none` and HS256/RS256 confusion."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wsnode.auth import TokenVerifier, check_origin, extract_token, normalize_origin
from wsnode.errors import AuthError

SECRET = "a-shared-secret-of-enough-length-32b"
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
PUBLIC_PEM = _KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
NOW = int(time.time())


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _hs(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def _hs_raw(claims: dict[str, Any], key: bytes) -> str:
    """HS256 signed with arbitrary bytes (PyJWT refuses a PEM as an HMAC key, attackers do not)."""
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = base64.urlsafe_b64encode(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature.rstrip(b'=').decode()}"


def _rs(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, PRIVATE_PEM, algorithm="RS256")


BOTH = TokenVerifier(hs256_secret=SECRET, rs256_public_key=PUBLIC_PEM)
HS_ONLY = TokenVerifier(hs256_secret=SECRET)
RS_ONLY = TokenVerifier(rs256_public_key=PUBLIC_PEM)


@pytest.mark.parametrize(("verifier", "token", "user"), [
    (HS_ONLY, _hs({"sub": "alice"}), "alice"),
    (HS_ONLY, _hs({"sub": "alice", "exp": NOW + 3600, "nbf": NOW - 1}), "alice"),
    (RS_ONLY, _rs({"sub": "bob", "exp": NOW + 3600}), "bob"),
    (BOTH, _hs({"sub": "carol"}), "carol"),
    (BOTH, _rs({"sub": "dave"}), "dave"),
])
def test_verify_accepts_good_tokens(verifier: TokenVerifier, token: str, user: str) -> None:
    assert verifier.verify(token).user == user


@pytest.mark.parametrize(("verifier", "token"), [
    (HS_ONLY, None),
    (HS_ONLY, ""),
    (HS_ONLY, "not.a.token"),
    (HS_ONLY, _hs({"sub": "a"}, key="another-secret-of-enough-length-32")),
    (HS_ONLY, _hs({"sub": "a", "exp": NOW - 3600})),
    (HS_ONLY, _hs({"sub": "a", "nbf": NOW + 3600})),
    (HS_ONLY, _hs({"name": "no sub"})),
    (HS_ONLY, _hs({"sub": 5})),
    (HS_ONLY, _hs({"sub": "has space"})),
    (HS_ONLY, _rs({"sub": "a"})),
    (HS_ONLY, f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'a'})}."),
    (BOTH, f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'a'})}."),
    (RS_ONLY, _hs_raw({"sub": "a"}, PUBLIC_PEM.encode())),  # HS/RS confusion: HMAC keyed with the public key
    (BOTH, _hs_raw({"sub": "a"}, PUBLIC_PEM.encode())),
    (RS_ONLY, _hs({"sub": "a"})),
    (RS_ONLY, jwt.encode({"sub": "a"}, SECRET * 2, algorithm="HS512")),
])
def test_verify_refuses_bad_tokens_with_401(verifier: TokenVerifier, token: str | None) -> None:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    assert info.value.status == 401


def test_verify_gives_anonymous_ids_only_when_allowed() -> None:
    anonymous = TokenVerifier(allow_anonymous=True)
    first, second = anonymous.verify(None), anonymous.verify(None)
    assert first.anonymous and first.user.startswith("anon-") and first.user != second.user


def test_verify_reports_expiry() -> None:
    assert HS_ONLY.verify(_hs({"sub": "a", "exp": NOW + 3600})).expires_at == NOW + 3600
    assert HS_ONLY.verify(_hs({"sub": "a"})).expires_at is None


@pytest.mark.parametrize("kwargs", [{}, {"hs256_secret": ""}, {"rs256_public_key": "not a pem"}])
def test_verifier_refuses_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(**kwargs)


@pytest.mark.parametrize(("authorization", "query", "token"), [
    ("Bearer abc", None, "abc"),
    ("bearer  abc ", "q", "abc"),
    ("Basic abc", "q", "q"),
    (None, "q", "q"),
    ("Bearer ", None, None),
    (None, "", None),
])
def test_extract_token_prefers_the_header(authorization: str | None, query: str | None, token: str | None) -> None:
    assert extract_token(authorization, query) == token


@pytest.mark.parametrize(("origin", "allowed", "ok"), [
    (None, ("https://app.example",), True),
    ("https://app.example", ("https://app.example",), True),
    ("https://APP.example:443", ("https://app.example",), True),
    ("https://app.example/", ("https://app.example",), True),
    ("http://app.example", ("https://app.example",), False),
    ("https://app.example:8443", ("https://app.example",), False),
    ("https://app.example.evil", ("https://app.example",), False),
    ("https://anything", (), True),
    ("https://anything", ("*",), True),
    ("null", ("https://app.example",), False),
])
def test_check_origin(origin: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    if ok:
        check_origin(origin, allowed)
    else:
        with pytest.raises(AuthError) as info:
            check_origin(origin, allowed)
        assert info.value.status == 403


def test_normalize_origin_drops_default_ports() -> None:
    assert normalize_origin("HTTP://Example.COM:80") == "http://example.com"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
