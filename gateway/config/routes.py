"""The routes part of routes.yaml: route entries, predicate/filter definitions in both notations, metadata.

Pure: works on the line-numbered tree the loader built (see `loader` for the accepted keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gateway.config.cors_settings import read_cors
from gateway.config.javaregex import group_names
from gateway.config.model import RouteSpec, parse_balancer_choice, parse_upstream
from gateway.config.nodes import Reader, YMap, YNode, YScalar, YSeq
from gateway.errors import ConfigError
from gateway.model import BalancerChoice, RouteMetadata, Upstream
from gateway.plugins import plugin_filter, plugin_predicate
from gateway.routing.cors import CorsConfig
from gateway.routing.factory import ArgValue, Definition, SpecError, Unsupported, relaxed
from gateway.routing.filters import FILTERS, GatewayFilter, build_filter
from gateway.routing.predicates import PREDICATES, RoutePredicate, build_predicate

T = TypeVar("T")
_ROUTE_KEYS = ("id", "uri", "order", "predicates", "filters", "metadata", "enabled")
_META_TIMEOUTS = {
    "connect-timeout": "connect_timeout_s",
    "response-timeout": "response_timeout_s",
    "idle-timeout": "idle_timeout_s",
}


def balancer_choice(reader: Reader, node: YNode, key: str) -> BalancerChoice:
    """A balancer choice written as `hash:header:X` or {algorithm: hash, hash-on: header:X}."""
    try:
        if isinstance(node, YMap):
            reader.check_keys(node, key, ("algorithm", "hash-on"))
            algorithm = reader.text(node.get("algorithm"), f"{key}.algorithm")
            return parse_balancer_choice(algorithm, reader.optional_text(node.get("hash-on"), f"{key}.hash-on"))
        return parse_balancer_choice(reader.text(node, key))
    except ValueError as exc:
        raise reader.error(str(exc), node, key) from None


class RouteReader:
    """Turns route and filter sections into RouteSpecs and compiled filters."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def routes(self, node: YNode | None, key: str, by_id: tuple[YNode, str] | None = None) -> tuple[RouteSpec, ...]:
        """Every route of a `routes:` list, then of a `routes-map:` (id -> route; SCG Server MVC's form)."""
        routes: list[RouteSpec] = []
        seen: dict[str, int] = {}
        entries = [(item, f"{key}[{index}]") for index, item in
                   enumerate(self.reader.sequence(node, key).items if node is not None else ())]
        if by_id is not None:
            for name, item in self.reader.mapping(by_id[0], by_id[1]).items:
                if isinstance(item, YMap) and item.get("id") is None:
                    item = YMap((("id", YScalar(name, item.line)), *item.items), item.line)
                entries.append((item, f"{by_id[1]}.{name}"))
        for index, (item, item_key) in enumerate(entries):
            route = self.route(item, item_key, index)
            if route is None:
                continue
            if route.id in seen:
                raise self.reader.error(f"duplicate route id {route.id!r} (first on line {seen[route.id]})", item, key)
            seen[route.id] = item.line
            routes.append(route)
        return tuple(routes)

    def route(self, node: YNode, key: str, index: int) -> RouteSpec | None:
        """One route entry; None for `enabled: false` (SCG leaves such a route out)."""
        r = self.reader
        if isinstance(node, YScalar):
            return self._shortcut_route(node, key)
        section = r.mapping(node, key)
        known = {relaxed(name) for name in _ROUTE_KEYS}
        for name, child in section.items:
            if relaxed(name) not in known:
                r.unknown(f"unknown key (known: {', '.join(_ROUTE_KEYS)})", child, f"{key}.{name}")
        enabled = section.get("enabled")
        if enabled is not None and not r.boolean(enabled, f"{key}.enabled"):
            return None
        id_node = section.get("id")
        route_id = r.text(id_node, f"{key}.id").strip() if id_node is not None else f"route-{index}"
        if not route_id:
            raise r.error("route id must not be empty", id_node, f"{key}.id")
        uri_node = section.get("uri")
        if uri_node is None:
            raise r.error("route has no uri", section, f"{key}.uri")
        uri = self._uri(uri_node, f"{key}.uri")
        if uri is None:
            return None
        order_node = section.get("order")
        order = r.integer(order_node, f"{key}.order") if order_node is not None else 0
        predicates: tuple[RoutePredicate, ...] = ()
        if (pnode := section.get("predicates")) is not None:
            predicates = tuple(
                self._compile(d, k, build_any_predicate) for d, k in self.definitions(pnode, f"{key}.predicates")
            )
        filters: tuple[GatewayFilter, ...] = ()
        if (fnode := section.get("filters")) is not None:
            filters = self.filters(fnode, f"{key}.filters")
        metadata = self.metadata(section.get("metadata"), f"{key}.metadata")
        try:
            return RouteSpec(route_id, uri, order, metadata, predicates, filters, section.line)
        except ValueError as exc:
            raise r.error(str(exc), section, key) from None

    def _uri(self, node: YNode, key: str) -> Upstream | None:
        """The route's upstream; None (the route left out, under `warn`) for a URI scheme wsgate has no use for."""
        text = self.reader.text(node, key)
        try:
            return parse_upstream(text)
        except ValueError as exc:
            if str(exc).startswith("unsupported uri"):
                self.reader.unknown(f"{exc}; the route is left out", node, key)
                return None
            raise self.reader.error(str(exc), node, key) from None

    def _shortcut_route(self, node: YScalar, key: str) -> RouteSpec | None:
        """SCG's one-line route `id=uri, Predicate=a, Predicate2=b` (RouteDefinition(String))."""
        text = self.reader.text(node, key)
        route_id, eq, rest = text.partition("=")
        parts = [part.strip() for part in rest.split(",")]
        if not eq or not route_id.strip() or not parts[0]:
            raise self.reader.error("a one-line route is written id=uri, Predicate=args, ...", node, key)
        uri = self._uri(YScalar(parts[0], node.line), key)
        if uri is None:
            return None
        predicates = []
        for index, part in enumerate(parts[1:]):
            try:
                predicates.append(build_any_predicate(Definition.shortcut(part)))
            except SpecError as exc:
                raise self.reader.error(str(exc), node, f"{key}.predicates[{index}]") from None
        return RouteSpec(route_id.strip(), uri, predicates=tuple(predicates), line=node.line)

    def filters(self, node: YNode, key: str) -> tuple[GatewayFilter, ...]:
        """A filter list (a route's, or default-filters); under `warn` an unknown filter is left out."""
        compiled: list[GatewayFilter] = []
        for located, item_key in self.definitions(node, key):
            definition, item = located
            if definition.name not in FILTERS:
                found = self._compile(located, item_key, plugin_filter)
                if found is None:
                    self.reader.unknown(
                        f"unknown filter {definition.name!r}: neither built in nor a plugin in the entry-point group "
                        f"wsgate.filters (built in: {', '.join(sorted(FILTERS))})", item, item_key)
                    continue
                compiled.append(found)
                continue
            try:
                compiled.append(self._compile(located, item_key, build_filter, unsupported=True))
            except Unsupported as exc:
                self.reader.unknown(str(exc), item, item_key)
        return tuple(compiled)

    def _compile(self, located: tuple[Definition, YNode], key: str, build: Callable[[Definition], T], *,
                 unsupported: bool = False) -> T:
        """`build(definition)`; a ConfigError naming the argument's line (an Unsupported name passes through when
        `unsupported`, for the caller to treat like an unknown one)."""
        definition, node = located
        try:
            return build(definition)
        except SpecError as exc:
            if unsupported and isinstance(exc, Unsupported):
                raise
            where = f"{key}.{exc.key}" if exc.key else key
            raise self.reader.error(f"{definition.name}: {exc}", self._arg_node(node, exc.key), where) from None

    def _arg_node(self, node: YNode, arg: str) -> YNode:
        if arg and isinstance(node, YMap):
            args = node.get("args")
            if isinstance(args, YMap) and (child := args.get(arg)) is not None:
                return child
        return node

    def definitions(self, node: YNode, key: str) -> list[tuple[tuple[Definition, YNode], str]]:
        """Each entry of a predicates/filters list as a Definition with its node and key."""
        result: list[tuple[tuple[Definition, YNode], str]] = []
        for index, item in enumerate(self.reader.sequence(node, key).items):
            item_key = f"{key}[{index}]"
            result.append(((self.definition(item, item_key), item), item_key))
        return result

    def definition(self, node: YNode, key: str) -> Definition:
        """`Name=a, b` or {name: Name, args: {...}} -> Definition (placeholders resolved)."""
        r = self.reader
        if isinstance(node, YScalar):
            raw = node.value or ""
            keep = self._group_names(raw.partition("=")[0].strip(), raw)
            try:
                return Definition.shortcut(r.text(node, key, keep=keep))
            except SpecError as exc:
                raise r.error(str(exc), node, key) from None
        section = r.mapping(node, key)
        r.check_keys(section, key, ("name", "args"))
        name = r.text(section.get("name"), f"{key}.name").strip()
        args_node = section.get("args")
        if args_node is None:
            return Definition(name)
        keep = self._group_names(name, _raw_text(args_node))
        pairs: list[tuple[str, ArgValue]] = []
        self._flatten_args(r.mapping(args_node, f"{key}.args"), "", f"{key}.args", keep, pairs)
        return Definition(name, tuple(pairs))

    @staticmethod
    def _group_names(name: str, raw: str) -> frozenset[str]:
        # Only RewritePath gives `${name}` a second meaning: its regex's named group.
        return frozenset(group_names(raw)) if name == "RewritePath" else frozenset()

    def _flatten_args(
        self, section: YMap, prefix: str, key: str, keep: frozenset[str], out: list[tuple[str, ArgValue]]
    ) -> None:
        for name, child in section.items:
            full = f"{prefix}{name}"
            child_key = f"{key}.{name}"
            if isinstance(child, YMap):
                self._flatten_args(child, f"{full}.", child_key, keep, out)
            elif isinstance(child, YSeq):
                out.append((full, tuple(self.reader.text(item, child_key, keep=keep) for item in child.items)))
            elif child.value is None:
                out.append((full, ""))
            else:
                out.append((full, self.reader.text(child, child_key, keep=keep)))

    def metadata(self, node: YNode | None, key: str) -> RouteMetadata:
        """Route `metadata:`: timeouts (ms or durations), load-balancer, retries, anything else as extra."""
        if node is None:
            return RouteMetadata()
        r = self.reader
        section = r.mapping(node, key)
        timeouts: dict[str, float] = {}
        balancer: BalancerChoice | None = None
        retries = 0
        cors: CorsConfig | None = None
        extra: list[tuple[str, str]] = []
        for name, child in section.items:
            child_key = f"{key}.{name}"
            normal = name.replace("_", "-").lower()
            if normal in _META_TIMEOUTS:
                timeouts[_META_TIMEOUTS[normal]] = r.duration_s(child, child_key, default_unit="ms",
                                                                 off=normal != "idle-timeout")
            elif normal in ("load-balancer", "loadbalancer"):
                balancer = balancer_choice(r, child, child_key)
            elif normal == "retries":
                retries = r.integer(child, child_key, minimum=0)
            elif normal == "cors":
                cors = read_cors(r, child, child_key, split=False)  # SCG's metadata reader keeps strings whole
            else:
                extra.append((name, _raw_text(child) if not isinstance(child, YScalar) else r.text(child, child_key)))
        try:
            return RouteMetadata(
                connect_timeout_s=timeouts.get("connect_timeout_s"),
                response_timeout_s=timeouts.get("response_timeout_s"),
                idle_timeout_s=timeouts.get("idle_timeout_s"),
                balancer=balancer,
                retries=retries,
                extra=tuple(extra),
                cors=cors,
            )
        except ValueError as exc:
            raise ConfigError(str(exc), file=r.file, line=section.line, key=key) from None


def build_any_predicate(definition: Definition) -> RoutePredicate:
    """A built-in predicate, else a plugin of the entry-point group wsgate.predicates (never left out)."""
    if definition.name in PREDICATES:
        return build_predicate(definition)
    found = plugin_predicate(definition)
    if found is None:
        return build_predicate(definition)  # its SpecError names the built-in predicates
    return found


def build_any_filter(definition: Definition) -> GatewayFilter:
    """A built-in filter, else a plugin (for routes built at run time, such as discovery.locator's)."""
    if definition.name not in FILTERS:
        found = plugin_filter(definition)
        if found is not None:
            return found
    return build_filter(definition)


def _raw_text(node: YNode) -> str:
    """All scalar text under a node, for finding RewritePath group names and showing extra metadata."""
    if isinstance(node, YScalar):
        return node.value or ""
    if isinstance(node, YSeq):
        return ", ".join(_raw_text(item) for item in node.items)
    return ", ".join(f"{k}: {_raw_text(v)}" for k, v in node.items)
