"""Route predicates with SCG's semantics: Path, Host, Method, Header, Query, Cookie, After, Before, Between,
RemoteAddr, Weight; pure. `build_predicate` turns a `Definition` into a compiled `RoutePredicate`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.javaregex import JavaRegexError, compile_java_regex
from gateway.model import RequestView, header_values
from gateway.routing.factory import Definition, Shortcut, SpecError, bind, get_bool, get_int, get_list, get_str
from gateway.routing.pathpattern import PathElements, PathPattern, PathPatternError, parse_path


def no_weight_groups(group: str) -> str | None:
    """The weight choice of a table without Weight predicates: no route is chosen in any group."""
    return None


class MatchContext:
    """One request being matched: predicates read it and record URI template variables in `variables`.

    `now` is read from the clock on first use when not given: most tables have no time predicate.
    """

    __slots__ = ("_now", "_path", "request", "route_id", "variables", "weight_choice")

    def __init__(self, request: RequestView, now: datetime | None = None,
                 weight_choice: Callable[[str], str | None] = no_weight_groups, route_id: str = "",
                 variables: dict[str, str] | None = None) -> None:
        self.request = request
        self._now = now
        self.weight_choice = weight_choice
        self.route_id = route_id
        self.variables: dict[str, str] = {} if variables is None else variables
        self._path: PathElements | None = None

    @property
    def now(self) -> datetime:
        """The moment the time predicates compare with (one for the whole match)."""
        if self._now is None:
            self._now = datetime.now(UTC)
        return self._now

    @property
    def path_elements(self) -> PathElements:
        """The request path parsed once for every Path predicate."""
        if self._path is None:
            self._path = parse_path(self.request.raw_path)
        return self._path


class RoutePredicate(Protocol):
    """One compiled predicate; `describe` is SCG's actuator text."""

    @property
    def name(self) -> str: ...

    def test(self, ctx: MatchContext) -> bool: ...

    def describe(self) -> str: ...


def _regex(text: str, key: str) -> re.Pattern[str]:
    try:
        return compile_java_regex(text)
    except JavaRegexError as exc:
        raise SpecError(str(exc), key=key) from exc


@dataclass(frozen=True, slots=True)
class PathPredicate:
    """`Path=/a/{x},/b/**[,false]`: any pattern matches; its variables become URI template variables."""

    patterns: tuple[PathPattern, ...]
    match_trailing_slash: bool = True

    name = "Path"

    def test(self, ctx: MatchContext) -> bool:
        path = ctx.path_elements
        for pattern in self.patterns:
            variables = pattern.match_elements(path)
            if variables is not None:
                ctx.variables.update(variables)
                return True
        return False

    def describe(self) -> str:
        joined = ", ".join(p.pattern for p in self.patterns)
        return f"Paths: [{joined}], match trailing slash: {str(self.match_trailing_slash).lower()}"


class HostPattern:
    """An Ant-style host pattern with '.' as separator: `**.example.org`, `{sub}.example.org`, `*.org`."""

    __slots__ = ("_regex", "_variables", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts: list[str] = []
        self._variables: list[tuple[str, str]] = []
        after_leading_any = False
        for index, label in enumerate(pattern.split(".")):
            if label == "**":
                # Zero or more labels: "**.example.org" also matches "example.org".
                parts.append(r"(?:[^.]+\.)*" if index == 0 else r"(?:\.[^.]+)*")
                after_leading_any = index == 0
                continue
            if index and not after_leading_any:
                parts.append(r"\.")
            after_leading_any = False
            parts.append(self._label(label))
        self._regex = re.compile("".join(parts), re.IGNORECASE)

    def _label(self, label: str) -> str:
        out: list[str] = []
        for token in re.split(r"(\{[^{}]+\}|\*|\?)", label):
            if not token:
                continue
            if token == "*":
                out.append("[^.]*")
            elif token == "?":
                out.append("[^.]")
            elif token.startswith("{"):
                var_name, _, constraint = token[1:-1].partition(":")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var_name):
                    raise SpecError(f"bad variable {token!r} in host pattern {self.pattern!r}", key="patterns")
                group = f"h{len(self._variables)}"
                inner = _regex(constraint, "patterns").pattern if constraint else "[^.]*"
                out.append(f"(?P<{group}>{inner})")
                self._variables.append((var_name, group))
            else:
                out.append(re.escape(token))
        return "".join(out)

    def match(self, host: str) -> dict[str, str] | None:
        """Variables if `host` (port ignored unless the pattern names one) matches, else None."""
        if ":" not in self.pattern:
            host = _strip_port(host)
        found = self._regex.fullmatch(host)
        if found is None:
            return None
        return {name: found.group(group) for name, group in self._variables}


def _strip_port(host: str) -> str:
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


@dataclass(frozen=True, slots=True)
class HostPredicate:
    """`Host=**.somehost.org,{sub}.myhost.org`: the Host header matches any pattern."""

    patterns: tuple[HostPattern, ...]

    name = "Host"

    def test(self, ctx: MatchContext) -> bool:
        host = ctx.request.host
        for pattern in self.patterns:
            variables = pattern.match(host)
            if variables is not None:
                ctx.variables.update(variables)
                return True
        return False

    def describe(self) -> str:
        return f"Hosts: [{', '.join(p.pattern for p in self.patterns)}]"


@dataclass(frozen=True, slots=True)
class MethodPredicate:
    """`Method=GET,POST`."""

    methods: frozenset[str]
    order: tuple[str, ...]

    name = "Method"

    def test(self, ctx: MatchContext) -> bool:
        return ctx.request.method.upper() in self.methods

    def describe(self) -> str:
        return f"Methods: [{', '.join(self.order)}]"


@dataclass(frozen=True, slots=True)
class ValuePredicate:
    """Header / Query / Cookie: the named item exists, and when a regexp is given one of its values matches."""

    kind: str  # Header | Query | Cookie
    key: str
    regexp: str | None
    _pattern: re.Pattern[str] | None

    @property
    def name(self) -> str:
        return self.kind

    def _values(self, request: RequestView) -> list[str]:
        if self.kind == "Header":
            return header_values(request.headers, self.key)
        if self.kind == "Query":
            return [v for k, v in parse_qsl(request.query, keep_blank_values=True) if k == self.key]
        values: list[str] = []
        for line in header_values(request.headers, "cookie"):
            for pair in line.split(";"):
                cname, eq, cvalue = pair.strip().partition("=")
                if eq and cname == self.key:
                    values.append(cvalue.strip().strip('"'))
        return values

    def test(self, ctx: MatchContext) -> bool:
        values = self._values(ctx.request)
        if self._pattern is None:
            return bool(values)
        return any(self._pattern.fullmatch(value) for value in values)

    def describe(self) -> str:
        if self.kind == "Header":
            return f"Header: {self.key} regexp={self.regexp}"
        if self.kind == "Query":
            return f"Query: param={self.key} regexp={self.regexp}"
        return f"Cookie: name={self.key} regexp={self.regexp}"


@dataclass(frozen=True, slots=True)
class TimePredicate:
    """After / Before / Between with SCG's ZonedDateTime strings (or epoch milliseconds)."""

    kind: str
    start: datetime | None
    end: datetime | None
    texts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.kind

    def test(self, ctx: MatchContext) -> bool:
        if self.start is not None and not ctx.now > self.start:
            return False
        return not (self.end is not None and not ctx.now < self.end)

    def describe(self) -> str:
        return f"{self.kind}: {' and '.join(self.texts)}"


@dataclass(frozen=True, slots=True)
class RemoteAddrPredicate:
    """`RemoteAddr=192.168.1.1/24,10.0.0.1`: the client's address is in one of the networks."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    texts: tuple[str, ...]

    name = "RemoteAddr"

    def test(self, ctx: MatchContext) -> bool:
        try:
            addr = ipaddress.ip_address(ctx.request.remote_addr.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in network for network in self.networks)

    def describe(self) -> str:
        return f"RemoteAddrs: [{', '.join(self.texts)}]"


@dataclass(frozen=True, slots=True)
class XForwardedRemoteAddrPredicate:
    """SCG's XForwardedRemoteAddr: RemoteAddr on the `maxTrustedIndex`-th X-Forwarded-For entry from the right."""

    inner: RemoteAddrPredicate
    max_trusted_index: int

    name = "XForwardedRemoteAddr"

    def test(self, ctx: MatchContext) -> bool:
        headers = header_values(ctx.request.headers, "x-forwarded-for")
        # Several X-Forwarded-For headers cannot be trusted: SCG then falls back to the peer address.
        values = [v.strip() for v in headers[0].split(",") if v.strip()] if len(headers) == 1 else []
        if not values:
            return self.inner.test(ctx)
        chosen = values[::-1][min(len(values), self.max_trusted_index) - 1]
        view = RequestView(ctx.request.method, ctx.request.raw_path, remote_addr=chosen)
        return self.inner.test(MatchContext(view))

    def describe(self) -> str:
        return f"XForwardedRemoteAddrs: [{', '.join(self.inner.texts)}], maxTrustedIndex: {self.max_trusted_index}"


@dataclass(frozen=True, slots=True)
class WeightPredicate:
    """`Weight=group, 8`: the route table picks one route per group per request, in proportion to weights."""

    group: str
    weight: int

    name = "Weight"

    def test(self, ctx: MatchContext) -> bool:
        return ctx.weight_choice(self.group) == ctx.route_id

    def describe(self) -> str:
        return f"Weight: {self.group} {self.weight}"


def parse_zoned_datetime(text: str) -> datetime:
    """Java's ZonedDateTime text (`2017-01-20T17:42:47.789-07:00[America/Denver]`) or epoch milliseconds."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    zone_name = None
    found = re.fullmatch(r"(.*)\[([^\]]+)\]", text)
    if found:
        text, zone_name = found.group(1), found.group(2)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SpecError(f"not a date-time: {text!r}") from None
    if moment.tzinfo is None:
        if zone_name is None:
            raise SpecError(f"date-time {text!r} has no offset or zone")
        try:
            moment = moment.replace(tzinfo=ZoneInfo(zone_name))
        except (ZoneInfoNotFoundError, ValueError):
            raise SpecError(f"unknown time zone {zone_name!r}") from None
    return moment


def _path(definition: Definition) -> PathPredicate:
    # `pattern` and `matchOptionalTrailingSeparator` are SCG 2.x's names, still bound by its relaxed binder.
    fields = ("patterns", "matchTrailingSlash", "pattern", "matchOptionalTrailingSeparator")
    args = bind(definition, fields, Shortcut.GATHER_LIST_TAIL_FLAG)
    texts = get_list(args, "patterns", required=False) or get_list(args, "pattern")
    old = get_bool(args, "matchOptionalTrailingSeparator", default=True)
    trailing = get_bool(args, "matchTrailingSlash", default=old)
    try:
        patterns = tuple(PathPattern(text, match_trailing_slash=trailing) for text in texts)
    except PathPatternError as exc:
        raise SpecError(str(exc), key="patterns") from exc
    return PathPredicate(patterns, trailing)


def _host(definition: Definition) -> HostPredicate:
    args = bind(definition, ("patterns", "pattern"), Shortcut.GATHER_LIST)  # `pattern`: SCG 2.0's single pattern
    texts = get_list(args, "patterns", required=False) or get_list(args, "pattern")
    return HostPredicate(tuple(HostPattern(text) for text in texts))


def _method(definition: Definition) -> MethodPredicate:
    args = bind(definition, ("methods",), Shortcut.GATHER_LIST)
    methods = tuple(m.upper() for m in get_list(args, "methods"))
    for method in methods:
        if not re.fullmatch(r"[A-Z]+", method):
            raise SpecError(f"bad HTTP method {method!r}", key="methods")
    return MethodPredicate(frozenset(methods), methods)


def _value(kind: str, first: str) -> Callable[[Definition], ValuePredicate]:
    def build(definition: Definition) -> ValuePredicate:
        args = bind(definition, (first, "regexp"))
        key = get_str(args, first)
        if not key:
            raise SpecError(f"{kind} needs a {first}", key=first)
        regexp = get_str(args, "regexp", default="") or None
        return ValuePredicate(kind, key, regexp, _regex(regexp, "regexp") if regexp else None)

    return build


def _time(kind: str) -> Callable[[Definition], TimePredicate]:
    fields = ("datetime1", "datetime2") if kind == "Between" else ("datetime",)

    def build(definition: Definition) -> TimePredicate:
        args = bind(definition, fields)
        texts = tuple(get_str(args, name) for name in fields)
        moments: list[datetime] = []
        for name, text in zip(fields, texts, strict=True):
            try:
                moments.append(parse_zoned_datetime(text))
            except SpecError as exc:
                raise SpecError(str(exc), key=name) from None
        if kind == "After":
            return TimePredicate(kind, moments[0], None, texts)
        if kind == "Before":
            return TimePredicate(kind, None, moments[0], texts)
        if not moments[0] < moments[1]:
            raise SpecError("datetime1 must be before datetime2", key="datetime2")
        return TimePredicate(kind, moments[0], moments[1], texts)

    return build


def _remote_addr(definition: Definition) -> RemoteAddrPredicate:
    args = bind(definition, ("sources",), Shortcut.GATHER_LIST)
    texts = get_list(args, "sources")
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise SpecError(f"not an address or CIDR: {text!r}", key="sources") from None
    return RemoteAddrPredicate(tuple(networks), texts)


def _x_forwarded_remote_addr(definition: Definition) -> XForwardedRemoteAddrPredicate:
    args = bind(definition, ("sources", "maxTrustedIndex"), Shortcut.GATHER_LIST)
    inner = _remote_addr(Definition("RemoteAddr", (("sources", get_list(args, "sources")),)))
    return XForwardedRemoteAddrPredicate(inner, get_int(args, "maxTrustedIndex", default=1, minimum=1))


def _weight(definition: Definition) -> WeightPredicate:
    args = bind(definition, ("group", "weight"))
    group = get_str(args, "group")
    if not group:
        raise SpecError("Weight needs a group", key="group")
    return WeightPredicate(group, get_int(args, "weight", minimum=0))


_CF_HEADERS = ("X-CF-Forwarded-Url", "X-CF-Proxy-Signature", "X-CF-Proxy-Metadata")


@dataclass(frozen=True, slots=True)
class CloudFoundryPredicate:
    """SCG's CloudFoundryRouteService: the three headers a Cloud Foundry route service receives are all present."""

    parts: tuple[ValuePredicate, ...] = tuple(ValuePredicate("Header", h, None, None) for h in _CF_HEADERS)

    @property
    def name(self) -> str:
        return "CloudFoundryRouteService"

    def test(self, ctx: MatchContext) -> bool:
        return all(part.test(ctx) for part in self.parts)

    def describe(self) -> str:
        return "CloudFoundryRouteService"


def _cloud_foundry(definition: Definition) -> CloudFoundryPredicate:
    if any(value for _, value in definition.args):  # `CloudFoundryRouteService=` (nothing after it) is fine
        raise SpecError("CloudFoundryRouteService takes no arguments")
    return CloudFoundryPredicate()


PREDICATES: dict[str, Callable[[Definition], RoutePredicate]] = {
    "Path": _path,
    "Host": _host,
    "Method": _method,
    "Header": _value("Header", "header"),
    "Query": _value("Query", "param"),
    "Cookie": _value("Cookie", "name"),
    "After": _time("After"),
    "Before": _time("Before"),
    "Between": _time("Between"),
    "RemoteAddr": _remote_addr,
    "Weight": _weight,
    "CloudFoundryRouteService": _cloud_foundry,
    "XForwardedRemoteAddr": _x_forwarded_remote_addr,
}


def build_predicate(definition: Definition) -> RoutePredicate:
    """Compile one predicate definition; SpecError for an unknown name or bad arguments."""
    factory = PREDICATES.get(definition.name)
    if factory is None:
        raise SpecError(f"unknown predicate {definition.name!r} (known: {', '.join(sorted(PREDICATES))})")
    return factory(definition)
