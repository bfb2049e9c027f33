"""`RequestRateLimiter` with SCG's arguments, parsed into a `RateLimit` for the proxy's Redis token bucket; pure.

Expanded form (SCG's): `redis-rate-limiter.replenishRate`, `.burstCapacity`, `.requestedTokens`, `key-resolver`
(`#{@ipKeyResolver}`-style bean names; without one SCG's default, the principal name), `deny-empty-key`,
`status-code` (429) and `empty-key-status-code` (403). Our additions: `key: header:X-User` (or `client`,
`principal`), and the shortcut `RequestRateLimiter=replenishRate, burstCapacity[, requestedTokens[, key]]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.model import RateLimit
from gateway.plugins import find_factory
from gateway.routing.factory import Definition, SpecError, bind, get_bool, get_int, get_str, parse_status, relaxed
from gateway.routing.filters.base import PlanState, check_header_name

_FIELDS = (
    "redis-rate-limiter.replenishRate",
    "redis-rate-limiter.burstCapacity",
    "redis-rate-limiter.requestedTokens",
    "key-resolver",
    "key",
    "deny-empty-key",
    "rate-limiter",
    "empty-key-status-code",
    "status-code",
    "empty-key-status",
    "replenishRate",
    "burstCapacity",
    "requestedTokens",
)
# SCG key-resolver bean names (relaxed) and what they key on.
_RESOLVERS = {
    "ipkeyresolver": "client",
    "remoteaddrkeyresolver": "client",
    "hostaddrkeyresolver": "client",
    "principalnamekeyresolver": "principal",
    "principalkeyresolver": "principal",
    "userkeyresolver": "principal",
}
_BEAN = re.compile(r"#\{@([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_key(text: str, *, field: str = "key") -> str:
    """`client`, `principal`, `header:NAME` or an SCG `#{@bean}` resolver name -> RateLimit.key."""
    text = text.strip()
    bean = _BEAN.fullmatch(text)
    if bean:
        if find_factory("key_resolver", bean.group(1)) is not None:
            return f"plugin:{bean.group(1)}"  # a team's own KeyResolver wins over a built-in alias of the name
        known = _RESOLVERS.get(relaxed(bean.group(1)))
        if known is None:
            names = ", ".join(sorted({"#{@ipKeyResolver}", "#{@principalNameKeyResolver}", "#{@userKeyResolver}"}))
            raise SpecError(f"unknown key resolver {text!r} (known: {names}, or header:NAME)", key=field)
        return known
    if text in ("client", "principal"):
        return text
    kind, _, name = text.partition(":")
    if kind == "header" and name:
        return f"header:{check_header_name(name, field)}"
    raise SpecError(f"bad rate-limit key {text!r} (client, principal or header:NAME)", key=field)


@dataclass(frozen=True, slots=True)
class RequestRateLimiter:
    """Adds its RateLimit to the plan; the proxy checks it against Redis."""

    limit: RateLimit

    name = "RequestRateLimiter"

    def apply(self, state: PlanState) -> None:
        state.rate_limits.append(self.limit)

    def describe(self) -> str:
        lim = self.limit
        return (
            f"[RequestRateLimiter replenishRate = {lim.replenish_rate}, burstCapacity = {lim.burst_capacity}, "
            f"requestedTokens = {lim.requested_tokens}, key = '{lim.key}']"
        )


def request_rate_limiter(definition: Definition) -> RequestRateLimiter:
    """Build RequestRateLimiter from either notation."""
    shortcut = tuple(field for field in _FIELDS[:4])
    args = bind(definition, shortcut + _FIELDS[4:])

    def pick(*names: str) -> str:
        for name in names:
            if relaxed(name) in args:
                return name
        return names[0]

    replenish_field = pick("redis-rate-limiter.replenishRate", "replenishRate")
    burst_field = pick("redis-rate-limiter.burstCapacity", "burstCapacity")
    tokens_field = pick("redis-rate-limiter.requestedTokens", "requestedTokens")
    replenish = get_int(args, replenish_field, minimum=1)
    burst = get_int(args, burst_field, default=replenish, minimum=0)
    if 0 < burst < replenish:
        raise SpecError(f"burstCapacity ({burst}) must be >= replenishRate ({replenish})", key=burst_field)
    tokens = get_int(args, tokens_field, default=1, minimum=1)
    key = "principal"  # SCG's default key resolver: PrincipalNameKeyResolver (403 without a principal)
    for field in ("key", "key-resolver"):
        if relaxed(field) in args:
            value = args[relaxed(field)]
            key = parse_key(value if isinstance(value, str) else ",".join(value), field=field)
    deny_empty = get_bool(args, "deny-empty-key", default=True)
    status = parse_status(get_str(args, "status-code", default="TOO_MANY_REQUESTS"), field="status-code")
    empty_field = pick("empty-key-status-code", "empty-key-status")
    empty_status = parse_status(get_str(args, empty_field, default="FORBIDDEN"), field=empty_field)
    return RequestRateLimiter(RateLimit(replenish, burst, tokens, key, deny_empty, status, empty_status))
