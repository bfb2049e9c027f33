"""Every key under `spring.cloud.gateway` is either used, accepted for the value wsgate behaves as, or reported.

SCG's properties (its `GatewayProperties`, `HttpClientProperties`, `DiscoveryLocatorProperties`,
`XForwardedHeadersFilter`, ...) are listed in `PROPERTIES` by their relaxed dotted path below the gateway root
(`spring.cloud.gateway`, `.server.webflux` or `.server.webmvc`), with what wsgate does about them. A key not
listed, or set to a value wsgate cannot honour, is refused naming its line, or a warning under
`wsgate.unknown-filters: warn` (see `Reader.unknown`). docs/routes.md shows the same table to users.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.nodes import Reader, YMap, YNode, YScalar, find
from gateway.routing.factory import relaxed

GATEWAY_ROOT = "spring.cloud.gateway"
_SUBROOTS = ("server.webflux", "server.webmvc", "mvc")  # `mvc`: SCG 4.0-4.2's Server MVC prefix


@dataclass(frozen=True, slots=True)
class Rule:
    """What wsgate does with one SCG property: `used` (read elsewhere), or the only value it behaves as."""

    used: bool = False
    only: str | None = None  # "true" / "false": wsgate always behaves so; another value is refused with `reason`
    reason: str = ""


_USED = Rule(used=True)


def _only(value: str, reason: str) -> Rule:
    return Rule(only=value, reason=reason)


PROPERTIES: dict[str, Rule] = {
    "routes": _USED,
    "routes-map": _USED,
    "default-filters": _USED,
    "discovery.locator": _USED,
    "globalcors": _USED,
    "httpclient.connect-timeout": _USED,
    "httpclient.response-timeout": _USED,
    "httpclient.ssl.use-insecure-trust-manager": _USED,
    "enabled": _only("true", "wsgate is the gateway; it cannot be switched off from its own file"),
    "fail-on-route-definition-error": _only("true", "wsgate refuses a bad route definition, always"),
    "metrics.enabled": _only("true", "wsgate always serves /actuator/prometheus"),
    "actuator.verbose.enabled": _only("true", "/actuator/gateway/routes always shows predicates and filters"),
    "route-filter-cache-enabled": _only("true", "wsgate compiles every route's filter chain once, at load"),
    "x-forwarded.enabled": _only("true", "wsgate always adds X-Forwarded-For/-Proto/-Host/-Port/-Prefix"),
    "x-forwarded.for-enabled": _only("true", "wsgate always adds X-Forwarded-For"),
    "x-forwarded.host-enabled": _only("true", "wsgate always adds X-Forwarded-Host"),
    "x-forwarded.port-enabled": _only("true", "wsgate always adds X-Forwarded-Port"),
    "x-forwarded.proto-enabled": _only("true", "wsgate always adds X-Forwarded-Proto"),
    "x-forwarded.prefix-enabled": _only("true", "wsgate always adds X-Forwarded-Prefix"),
    "x-forwarded.for-append": _only("true", "wsgate always appends to X-Forwarded-For"),
    "forwarded.enabled": _only("false", "wsgate does not add the RFC 7239 Forwarded header (X-Forwarded-* only)"),
    "httpclient.wiretap": _only("false", "no wire dumps; use the access log"),
    "httpserver.wiretap": _only("false", "no wire dumps; use the access log"),
    "loadbalancer.use404": _only("false", "no instance left is answered 503 with a JSON body naming the service"),
}

_RELAXED = {relaxed(path): rule for path, rule in PROPERTIES.items()}
_PREFIXES = {".".join(path.split(".")[:n]) for path in _RELAXED for n in range(1, path.count(".") + 1)}
_ENABLE_FLAGS = ("filter", "predicate")  # `filter.<name>.enabled`, `predicate.<name>.enabled`


def _rule(path: str) -> Rule | None:
    rule = _RELAXED.get(relaxed(path))
    if rule is not None:
        return rule
    parts = relaxed(path).split(".")
    if len(parts) == 3 and parts[0] in _ENABLE_FLAGS and parts[2] == "enabled":
        return _only("true", f"every built-in {parts[0]} stays available in wsgate")
    return None


def gateway_sections(root: YMap) -> list[tuple[str, YMap]]:
    """The gateway's root sections that are present: spring.cloud.gateway and its server.webflux/webmvc forms."""
    found: list[tuple[str, YMap]] = []
    base = find(root, GATEWAY_ROOT)
    if isinstance(base, YMap):
        found.append((GATEWAY_ROOT, base))
        for sub in _SUBROOTS:
            node = find(base, sub)
            if isinstance(node, YMap):
                found.append((f"{GATEWAY_ROOT}.{sub}", node))
    return found


def check_gateway_keys(reader: Reader, root: YMap) -> None:
    """Refuse (or warn about) every key under the gateway roots that PROPERTIES does not cover."""
    for prefix, section in gateway_sections(root):
        for name, child in section.items:
            if prefix == GATEWAY_ROOT and relaxed(name) == "server" and isinstance(child, YMap):
                # server.webflux / server.webmvc are walked as roots of their own; anything else there is unknown.
                for sub, node in child.items:
                    if relaxed(sub) not in ("webflux", "webmvc"):
                        reader.unknown("not a Spring Cloud Gateway property", node, f"{prefix}.server.{sub}")
                continue
            if prefix == GATEWAY_ROOT and relaxed(name) == "mvc" and isinstance(child, YMap):
                continue  # a root of its own
            _walk(reader, child, [name], prefix)


def _walk(reader: Reader, node: YNode, parts: list[str], prefix: str) -> None:
    if (isinstance(node, YScalar) and node.value is None) or (isinstance(node, YMap) and not node.items):
        return  # `filter:` with nothing under it sets nothing, in Spring as here
    path = ".".join(parts)
    key = f"{prefix}.{'.'.join(parts)}"
    rule = _rule(path)
    if rule is not None:
        if rule.used:
            return
        value = reader.text(node, key).strip().lower() if isinstance(node, YScalar) else None
        if value != rule.only:
            reader.unknown(f"only {rule.only} is supported: {rule.reason}", node, key)
        return
    rpath = relaxed(path)
    flag = rpath.split(".")[0] in _ENABLE_FLAGS and rpath.count(".") <= 1
    if isinstance(node, YMap) and node.items and (rpath in _PREFIXES or flag):
        for name, child in node.items:
            _walk(reader, child, [*parts, name], prefix)
        return
    reader.unknown("a Spring Cloud Gateway property that wsgate does not implement (see docs/routes.md)", node, key)

