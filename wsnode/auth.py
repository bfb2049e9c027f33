"""Handshake checks (pure): client JWTs (HS256 secret or RS256 public key) and allowed origins.

Each algorithm is tied to its own key: an HS256 token is checked only with the shared secret and an RS256 token only
with the public key, so a token HMAC-signed with the public key text ("algorithm confusion") and `alg: none` tokens
are refused.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

from wsnode.errors import AuthError


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session belongs to, and until when its token is valid (epoch seconds, None = no expiry)."""

    user: str
    expires_at: float | None
    anonymous: bool = False


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks client tokens with the configured keys."""

    hs256_secret: str | None = None
    rs256_public_key: str | None = None
    leeway_s: float = 0.0
    allow_anonymous: bool = False

    def __post_init__(self) -> None:
        if self.hs256_secret is not None and not self.hs256_secret:
            raise ValueError("the HS256 secret must not be empty")
        if self.rs256_public_key is not None and "PUBLIC KEY" not in self.rs256_public_key:
            raise ValueError("the RS256 public key must be a PEM public key")
        if not (self.hs256_secret or self.rs256_public_key or self.allow_anonymous):
            raise ValueError("no way to authenticate clients: give a JWT secret, a public key or allow anonymous")

    def verify(self, token: str | None) -> Identity:
        """The identity in `token`; AuthError(401) when missing, malformed, badly signed, expired or not yet valid."""
        if not token:
            if self.allow_anonymous:
                return Identity(user=f"anon-{uuid.uuid4().hex[:12]}", expires_at=None, anonymous=True)
            raise AuthError("missing token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        key: str
        if alg == "HS256" and self.hs256_secret:
            key = self.hs256_secret
        elif alg == "RS256" and self.rs256_public_key:
            key = self.rs256_public_key
        else:
            raise AuthError(f"token algorithm {alg!r} not accepted")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], leeway=self.leeway_s,
                                options={"require": ["sub"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or "|" in sub or len(sub) > 128 or any(c.isspace() for c in sub):
            raise AuthError("token sub must be a user id (1-128 characters, no spaces or '|')")
        exp = claims.get("exp")
        return Identity(user=sub, expires_at=float(exp) if isinstance(exp, int | float) else None)


def extract_token(authorization: str | None, query_token: str | None) -> str | None:
    """The token from `Authorization: Bearer ...`, else from the `token` query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None


def normalize_origin(origin: str) -> str:
    """scheme://host[:port] in lower case, default ports dropped."""
    parts = urlsplit(origin.strip().lower())
    if not parts.scheme or not parts.hostname:
        return origin.strip().lower().rstrip("/")
    port = parts.port
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def check_origin(origin: str | None, allowed: tuple[str, ...]) -> None:
    """AuthError(403) when a browser Origin is outside `allowed`; no Origin (non-browser) and `*` always pass.

    An empty allowed list means any origin (development); deployments set --allowed-origins.
    """
    if origin is None or not allowed or "*" in allowed:
        return
    if normalize_origin(origin) not in {normalize_origin(a) for a in allowed}:
        raise AuthError(f"origin {origin!r} not allowed", status=403)
