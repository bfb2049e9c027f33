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

from wsnode.auth import BearerKeys, TokenVerifier, check_origin, extract_token, normalize_origin
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
    (HS_ONLY, _hs({"sub": "alice", "exp": NOW + 3600}), "alice"),
    (HS_ONLY, _hs({"sub": "alice", "exp": NOW + 3600, "nbf": NOW - 1}), "alice"),
    (RS_ONLY, _rs({"sub": "bob", "exp": NOW + 3600}), "bob"),
    (BOTH, _hs({"sub": "carol", "exp": NOW + 3600}), "carol"),
    (BOTH, _rs({"sub": "dave", "exp": NOW + 3600}), "dave"),
    (BOTH, _hs({"sub": "é-ü@x.org", "exp": NOW + 3600}), "é-ü@x.org"),
    (TokenVerifier(hs256_secret=SECRET, allow_no_exp=True), _hs({"sub": "erin"}), "erin"),
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
    assert TokenVerifier(hs256_secret=SECRET, allow_no_exp=True).verify(_hs({"sub": "a"})).expires_at is None


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


HOUR = NOW + 3600
STRICT = TokenVerifier(hs256_secret=SECRET, audience="wsgate", issuer="https://idp.example")


@pytest.mark.parametrize(("verifier", "claims", "reason"), [
    # exp is required unless --jwt-allow-no-exp: such a token would never expire.
    (HS_ONLY, {"sub": "a"}, "token has no 'exp' claim"),
    (BOTH, {"sub": "a", "iat": NOW}, "token has no 'exp' claim"),
    # A user id is 1-128 printable characters, no whitespace or control characters, matched whole.
    (HS_ONLY, {"sub": "bob\n", "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "a\x00b", "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "a\x1bb", "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "a\u200bb\u2028", "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "tab\there", "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "", "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "x" * 129, "exp": HOUR}, "token sub must be a user id"),
    (HS_ONLY, {"sub": "a|b", "exp": HOUR}, "token sub must be a user id"),
    # --jwt-audience and --jwt-issuer, when set, are checked.
    (STRICT, {"sub": "a", "exp": HOUR, "iss": "https://idp.example"}, "token has no 'aud' claim"),
    (STRICT, {"sub": "a", "exp": HOUR, "aud": "other", "iss": "https://idp.example"}, "token audience not accepted"),
    (STRICT, {"sub": "a", "exp": HOUR, "aud": "wsgate"}, "token has no 'iss' claim"),
    (STRICT, {"sub": "a", "exp": HOUR, "aud": "wsgate", "iss": "https://evil.example"}, "token issuer not accepted"),
])
def test_verify_refuses_tokens_outside_the_claim_rules(verifier: TokenVerifier, claims: dict[str, Any],
                                                       reason: str) -> None:
    with pytest.raises(AuthError) as info:
        verifier.verify(_hs(claims))
    assert info.value.status == 401
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize("claims", [
    {"sub": "a", "exp": HOUR, "aud": "wsgate", "iss": "https://idp.example"},
    {"sub": "a", "exp": HOUR, "aud": ["other", "wsgate"], "iss": "https://idp.example"},
])
def test_verify_accepts_the_configured_audience_and_issuer(claims: dict[str, Any]) -> None:
    assert STRICT.verify(_hs(claims)).user == "a"


def test_verify_reports_when_the_token_was_issued() -> None:
    assert HS_ONLY.verify(_hs({"sub": "a", "exp": HOUR, "iat": NOW - 10})).issued_at == NOW - 10
    assert HS_ONLY.verify(_hs({"sub": "a", "exp": HOUR})).issued_at is None


@pytest.mark.parametrize(("header", "admitted"), [
    ("Bearer k1", True), ("bearer  k2 ", True), ("Bearer k3", False), ("Basic k1", False), ("Bearer", False),
    ("", False), (None, False), ("Bearer k1k2", False),
])
def test_bearer_keys_admit_exactly_the_configured_keys(header: str | None, admitted: bool) -> None:
    assert BearerKeys(("k1", "k2")).admits(header) is admitted
    assert BearerKeys((), open=True).admits(header) is True
