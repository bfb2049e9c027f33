"""`spring.cloud.gateway.discovery.locator`: a route for every service discovery knows, as SCG builds them; pure.

SCG's `DiscoveryClientRouteDefinitionLocator` gives each service the route `<route-id-prefix><serviceId>` to
`lb://<serviceId>` with the predicates and filters of `discovery.locator.predicates`/`.filters`, whose arguments
are SpEL expressions over the service. Their defaults (`GatewayDiscoveryClientAutoConfiguration`):
`Path='/'+serviceId+'/**'` and `RewritePath='/' + serviceId + '/?(?<remaining>.*)', '/${remaining}'`.
wsgate evaluates the SpEL forms these settings use in practice: string literals, `serviceId`, `metadata['k']`
joined with `+`; `include-expression` also takes `==`, `!=`, `matches`, `startsWith`, `endsWith`, `contains`,
`containsKey`, `null`, `true`/`false`, `!`, `&&`/`||` (`and`/`or`/`not`) and parentheses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from gateway.config.model import GatewayConfig, RouteSpec, parse_upstream
from gateway.routing.factory import ArgValue, Definition, SpecError

DEFAULT_PREFIX = "ReactiveCompositeDiscoveryClient_"
DEFAULT_PREDICATES = (Definition("Path", (("pattern", "'/'+serviceId+'/**'"),)),)
DEFAULT_FILTERS = (
    Definition("RewritePath", (("regexp", "'/' + serviceId + '/?(?<remaining>.*)'"),
                               ("replacement", "'/${remaining}'"))),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What the locator knows of one service: its name and the metadata its instances share."""

    name: str
    metadata: tuple[tuple[str, str], ...] = ()
    # Each instance's metadata: `include-expression` holds when it holds for any of them (SCG tests instances).
    instances: tuple[tuple[tuple[str, str], ...], ...] = ()


@dataclass(frozen=True, slots=True)
class LocatorSettings:
    """`discovery.locator` as read from the file (argument values still SpEL)."""

    enabled: bool = False
    lower_case_service_id: bool = False
    include_expression: str = "true"
    url_expression: str = "'lb://'+serviceId"
    route_id_prefix: str = DEFAULT_PREFIX
    predicates: tuple[Definition, ...] = DEFAULT_PREDICATES
    filters: tuple[Definition, ...] = DEFAULT_FILTERS


class SpelError(ValueError):
    """An expression outside the SpEL subset wsgate evaluates."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")|(?P<op>==|!=|&&|\|\||[()+!.\[\],])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>\d+))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None or found.end() == pos:
            raise SpelError(f"cannot read the expression at {text[pos:]!r}")
        kind = found.lastgroup or ""
        value = found.group(kind)
        if kind == "str":
            quote = value[0]
            value = value[1:-1].replace(quote * 2, quote)
        out.append((kind, value))
        pos = found.end()
    return out


class _Spel:
    """A recursive-descent evaluator over one service (the subset in the module docstring)."""

    def __init__(self, text: str, service: ServiceInfo) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.service = service
        self.text = text

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, value: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (value is not None and token[1] != value):
            raise SpelError(f"expected {value or 'more'} in {self.text!r}")
        self.pos += 1
        return token

    def evaluate(self) -> object:
        value = self._or()
        if self._peek() is not None:
            raise SpelError(f"unexpected {self._peek()[1]!r} in {self.text!r}")  # type: ignore[index]
        return value

    def _or(self) -> object:
        value = self._and()
        while self._peek() in (("op", "||"), ("word", "or")):
            self.pos += 1
            other = self._and()
            value = _truth(value) or _truth(other)
        return value

    def _and(self) -> object:
        value = self._compare()
        while self._peek() in (("op", "&&"), ("word", "and")):
            self.pos += 1
            other = self._compare()
            value = _truth(value) and _truth(other)
        return value

    def _compare(self) -> object:
        left = self._sum()
        token = self._peek()
        if token in (("op", "=="), ("op", "!=")):
            self.pos += 1
            right = self._sum()
            return (left == right) == (token == ("op", "=="))
        if token == ("word", "matches"):
            self.pos += 1
            right = self._sum()
            return isinstance(left, str) and re.fullmatch(str(right), left) is not None
        return left

    def _sum(self) -> object:
        value = self._unary()
        while self._peek() == ("op", "+"):
            self.pos += 1
            other = self._unary()
            value = ("" if value is None else str(value)) + ("" if other is None else str(other))
        return value

    def _unary(self) -> object:
        if self._peek() in (("op", "!"), ("word", "not")):
            self.pos += 1
            return not _truth(self._unary())
        return self._postfix(self._primary())

    def _primary(self) -> object:
        kind, value = self._take()
        if kind in ("str", "num"):
            return value
        if (kind, value) == ("op", "("):
            inner = self._or()
            self._take(")")
            return inner
        if kind == "word":
            names: dict[str, object] = {
                "true": True, "false": False, "null": None, "serviceId": self.service.name,
                "metadata": dict(self.service.metadata),
            }  # fmt: skip
            if value in names:
                return names[value]
            if value == "Locale":  # `toLowerCase(Locale.ROOT)`: the locale changes nothing here
                self._take(".")
                self._take()
                return None
            if value == "getServiceId":
                self._take("(")
                self._take(")")
                return self.service.name
        raise SpelError(f"unsupported {value!r} in {self.text!r} (serviceId, metadata['k'], string literals)")

    def _postfix(self, value: object) -> object:
        while True:
            token = self._peek()
            if token == ("op", "["):
                self.pos += 1
                key = self._or()
                self._take("]")
                value = value.get(str(key)) if isinstance(value, dict) else None
            elif token == ("op", "."):
                self.pos += 1
                _, method = self._take()
                self._take("(")
                arg = self._or() if self._peek() != ("op", ")") else None
                self._take(")")
                value = _call(value, method, arg, self.text)
            else:
                return value


_METHODS: dict[str, Callable[[str, str], object]] = {
    "startsWith": str.startswith, "endsWith": str.endswith, "contains": lambda s, a: a in s,
    "equals": lambda s, a: s == a, "equalsIgnoreCase": lambda s, a: s.lower() == a.lower(),
    "matches": lambda s, a: re.fullmatch(a, s) is not None,
}  # fmt: skip


def _call(target: object, method: str, arg: object, text: str) -> object:
    if isinstance(target, dict) and method in ("containsKey", "get"):
        return (str(arg) in target) if method == "containsKey" else target.get(str(arg))
    if isinstance(target, str):
        if method == "toLowerCase":
            return target.lower()
        if method == "toUpperCase":
            return target.upper()
        if method in _METHODS:
            return _METHODS[method](target, str(arg))
    if target is None:
        return None
    raise SpelError(f"unsupported method {method!r} in {text!r}")


def _truth(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def evaluate(text: str, service: ServiceInfo) -> object:
    """Evaluate a SpEL expression (the subset above) for one service; SpelError when it is outside it."""
    return _Spel(text, service).evaluate()


def _arg(value: ArgValue, service: ServiceInfo) -> ArgValue:
    if isinstance(value, tuple):
        return tuple(str(evaluate(item, service)) for item in value)
    return str(evaluate(value, service))


def route_for(
    settings: LocatorSettings,
    service: ServiceInfo,
    build_predicate: Callable[[Definition], object],
    build_filter: Callable[[Definition], object],
) -> RouteSpec | None:
    """The route SCG would build for `service`, or None when `include-expression` leaves it out.

    SpelError/SpecError/ValueError when the settings cannot make a route for it.
    """
    name = service.name.lower() if settings.lower_case_service_id else service.name
    chosen = [meta for meta in (service.instances or (service.metadata,))
              if _truth(evaluate(settings.include_expression, ServiceInfo(name, meta)))]
    if not chosen:
        return None
    seen = ServiceInfo(name, chosen[-1])  # SCG keeps the last included instance of a service
    # The uri keeps the service's own spelling: Consul matches names without regard to case, the dev agent and
    # our discovery watch do not, and `lb://` resolves the same instances either way.
    uri = parse_upstream(str(evaluate(settings.url_expression, service)))
    predicates = tuple(
        build_predicate(Definition(d.name, tuple((k, _arg(v, seen)) for k, v in d.args))) for d in settings.predicates
    )
    filters = tuple(
        build_filter(Definition(d.name, tuple((k, _arg(v, seen)) for k, v in d.args))) for d in settings.filters
    )
    return RouteSpec(settings.route_id_prefix + service.name, uri, 0, predicates=predicates,  # type: ignore[arg-type]
                     filters=filters)  # type: ignore[arg-type]


def locator_routes(
    settings: LocatorSettings,
    services: Mapping[str, ServiceInfo],
    build_predicate: Callable[[Definition], object],
    build_filter: Callable[[Definition], object],
    *,
    on_error: Callable[[str, Exception], None] = lambda name, exc: None,
) -> tuple[RouteSpec, ...]:
    """Routes for every service (sorted by name); a service whose route cannot be built is reported and skipped."""
    routes: list[RouteSpec] = []
    for name in sorted(services):
        try:
            route = route_for(settings, services[name], build_predicate, build_filter)
        except (SpelError, SpecError, ValueError) as exc:
            on_error(name, exc)
            continue
        if route is not None:
            routes.append(route)
    return tuple(routes)


def with_located(config: GatewayConfig, located: tuple[RouteSpec, ...]) -> GatewayConfig:
    """`config` with the locator's routes after the file's; a file route of the same id wins."""
    if not located:
        return config
    ids = {route.id for route in config.routes}
    return replace(config, routes=config.routes + tuple(r for r in located if r.id not in ids))
