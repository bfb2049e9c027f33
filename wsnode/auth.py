"""Handshake checks (pure): client JWTs (HS256 secret or RS256 public key) and allowed origins.

Each algorithm is tied to its own key: an HS256 token is checked only with the shared secret and an RS256 token only
with the public key, so a token HMAC-signed with the public key text ("algorithm confusion") and `alg: none` tokens
are refused.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt

from wsnode.envelope import USER_ID_RULE, valid_user_id
from wsnode.errors import AuthError


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session belongs to, until when its token is valid and when it was issued (epoch seconds or None)."""

    user: str
    expires_at: float | None
    anonymous: bool = False
    issued_at: float | None = None


@dataclass(frozen=True, slots=True)
class TokenVerifier:
    """Checks client tokens with the configured keys."""

    hs256_secret: str | None = None
    rs256_public_key: str | None = None
    leeway_s: float = 0.0
    allow_anonymous: bool = False
    allow_no_exp: bool = False  # a token without `exp` never expires: refused unless this is set
    audience: str | None = None  # when set, `aud` must name it
    issuer: str | None = None  # when set, `iss` must be it

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
        required = ["sub"] if self.allow_no_exp else ["sub", "exp"]
        if self.audience is not None:
            required.append("aud")
        if self.issuer is not None:
            required.append("iss")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], leeway=self.leeway_s, audience=self.audience,
                                issuer=self.issuer,
                                options={"require": required, "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer not accepted") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not valid_user_id(sub):
            raise AuthError(f"token sub must be a user id: {USER_ID_RULE}")
        assert isinstance(sub, str)
        exp, iat = claims.get("exp"), claims.get("iat")
        return Identity(user=sub, expires_at=_epoch(exp), issued_at=_epoch(iat))


def _epoch(value: object) -> float | None:
    # PyJWT has checked that exp/nbf/iat, when present, are numbers; bool is an int but no time.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class BearerKeys:
    """A set of bearer keys (push API keys, management keys); `open` admits every request (development only)."""

    keys: tuple[str, ...]
    open: bool = False

    def admits(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header carries one of the keys."""
        if self.open:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return False
        given = value.strip().encode()
        # Compare with every key (no early exit) so timing does not tell which one almost matched.
        return sum(hmac.compare_digest(given, key.encode()) for key in self.keys) > 0


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
