"""RequestRateLimiter decisions with Spring Cloud Gateway's semantics; pure (the Redis call is in `ratelimit_redis`).

Who a caller is (`RateLimit.key`):

- `client`: the client's IP address (SCG's `RemoteAddrKeyResolver`); IPv4-mapped IPv6 is folded to IPv4 so one
  client has one bucket whichever socket family accepted it.
- `header:NAME`: the first value of header NAME, stripped; how a route names a header set by a trusted proxy.
- `principal`: the user name of HTTP Basic auth (`Authorization: Basic`). The gateway does not check the password:
  like a header key it identifies, it does not authenticate, so a client can spend another user's bucket by naming
  them. Bearer tokens are deliberately not read (an unverified JWT `sub` would be the same trust with more parsing);
  routes whose callers authenticate upstream should key on a header that trusted hop sets.

An empty key is refused with 403 when `deny_empty_key` (SCG's default) and let through without headers otherwise.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from gateway.model import Headers, RateLimit, RequestView

REMAINING_HEADER = "X-RateLimit-Remaining"
REPLENISH_RATE_HEADER = "X-RateLimit-Replenish-Rate"
BURST_CAPACITY_HEADER = "X-RateLimit-Burst-Capacity"
REQUESTED_TOKENS_HEADER = "X-RateLimit-Requested-Tokens"

ALLOWED_STATUS = 200
UNAVAILABLE_STATUS = 503  # fail-closed while Redis cannot answer: the limiter, not the caller, is at fault

# SCG reports -1 tokens left when Redis could not be asked.
UNKNOWN_TOKENS = -1


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a request may pass; when not, `status` is what to answer. `headers` go on the response either way."""

    allowed: bool
    status: int = ALLOWED_STATUS
    headers: Headers = ()

    def __post_init__(self) -> None:
        if self.allowed != (self.status == ALLOWED_STATUS):
            raise ValueError(f"an {'allowed' if self.allowed else 'denied'} decision cannot have status {self.status}")
        if not 200 <= self.status <= 599:
            raise ValueError(f"bad HTTP status {self.status}")


def check_limit(limit: RateLimit) -> None:
    """Refuse a RateLimit the token bucket cannot run (SCG's @Min constraints); ValueError names the field."""
    if limit.replenish_rate < 1:
        raise ValueError(f"replenishRate must be >= 1, not {limit.replenish_rate}")
    if limit.burst_capacity < 0:
        raise ValueError(f"burstCapacity must be >= 0, not {limit.burst_capacity}")
    if limit.requested_tokens < 1:
        raise ValueError(f"requestedTokens must be >= 1, not {limit.requested_tokens}")


def _client_key(addr: str) -> str:
    addr = addr.strip()
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def basic_auth_user(authorization: str | None) -> str:
    """The user name of an `Authorization: Basic` value, or "" when there is none or it is malformed."""
    if not authorization:
        return ""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    user, colon, _password = decoded.partition(":")
    return user if colon else ""


def resolve_key(limit: RateLimit, request: RequestView) -> str:
    """The caller's identity under `limit.key`; "" when the request carries none (the empty key)."""
    kind = limit.key
    if kind == "client":
        return _client_key(request.remote_addr)
    if kind == "principal":
        return basic_auth_user(request.header("authorization"))
    prefix, _, name = kind.partition(":")
    if prefix == "header" and name:
        return (request.header(name) or "").strip()
    if prefix == "plugin" and name:
        # A team's own KeyResolver (gateway.plugins): None or "" is the empty key, as in SCG.
        from gateway.plugins import Exchange, key_resolver

        resolver = key_resolver(name)
        return (resolver(Exchange.of(request)) or "") if resolver is not None else ""
    raise ValueError(f"bad rate-limit key {kind!r} (client, principal or header:NAME)")


def bucket_keys(route_id: str, key: str, *, key_prefix: str = "") -> tuple[str, str]:
    """SCG's Redis keys for one caller on one route: tokens and timestamp, sharing a cluster hash tag."""
    base = f"{key_prefix}request_rate_limiter.{{{route_id}.{key}}}."
    return base + "tokens", base + "timestamp"


def script_args(limit: RateLimit, now_s: int) -> tuple[int, int, int, int]:
    """The Lua script's ARGV: rate, capacity, now (whole seconds, as SCG), requested."""
    check_limit(limit)
    return limit.replenish_rate, limit.burst_capacity, now_s, limit.requested_tokens


def rate_limit_headers(limit: RateLimit, tokens_left: int) -> Headers:
    """SCG's X-RateLimit-* response headers."""
    return (
        (REMAINING_HEADER, str(tokens_left)),
        (REPLENISH_RATE_HEADER, str(limit.replenish_rate)),
        (BURST_CAPACITY_HEADER, str(limit.burst_capacity)),
        (REQUESTED_TOKENS_HEADER, str(limit.requested_tokens)),
    )


def decide(limit: RateLimit, allowed: bool, tokens_left: int) -> RateDecision:
    """The decision for the script's answer: pass, or 429, with the headers in both cases."""
    status = ALLOWED_STATUS if allowed else limit.status_code
    return RateDecision(allowed, status, rate_limit_headers(limit, tokens_left))


def empty_key_decision(limit: RateLimit) -> RateDecision:
    """A request without a key: 403 when `deny_empty_key`, else it passes unmetered (no headers, as SCG)."""
    if limit.deny_empty_key:
        return RateDecision(False, limit.empty_key_status)
    return RateDecision(True)


def unavailable_decision(limit: RateLimit, *, fail_open: bool) -> RateDecision:
    """Redis could not answer: pass (SCG's choice) or 503, with -1 tokens left."""
    status = ALLOWED_STATUS if fail_open else UNAVAILABLE_STATUS
    return RateDecision(fail_open, status, rate_limit_headers(limit, UNKNOWN_TOKENS))


def resp_command(*args: str | int) -> bytes:
    """A Redis command in RESP, as the native lane sends it (gateway/_http_redis.c)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def lane_script_call(sha: str, keys: tuple[str, str], limit: RateLimit) -> tuple[bytes, bytes]:
    """EVALSHA of the token bucket script in RESP, split where ARGV[3] (now, whole seconds) goes: the lane inserts
    its clock's second there."""
    rate, capacity, _now, requested = script_args(limit, 0)
    before = resp_command("EVALSHA", sha, 2, *keys, rate, capacity)
    return b"*9" + before[before.index(b"\r\n"):], resp_command(requested)[len(b"*1\r\n"):]
