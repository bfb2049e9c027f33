"""A team's own filters, predicates and key resolvers, as Python plugins found through entry points.

The stable API (docs/plugins.md) is what this module exports: `Exchange`, `Response` and the three entry-point
groups. A YAML name that is no built-in is looked up in its group (`wsgate.filters`, `wsgate.predicates`,
`wsgate.key_resolvers`); the entry point's object is a factory called once per definition with the definition's
arguments, as SCG calls a `GatewayFilterFactory` with its `Config`:

- filter factory(args) -> an object with `async def filter(self, exchange: Exchange) -> Response | None`;
- predicate factory(args) -> a callable `(exchange: Exchange) -> bool` (plain, not async: matching must not wait);
- key resolver factory(args) -> a callable `(exchange: Exchange) -> str | None` (SCG's `KeyResolver`).

`args` maps each argument name to its value (a string, or a tuple of strings for a list); shortcut values
(`ValidateCodeFilter=a, b`) are bound to the factory's `shortcut_fields` in order, or kept as `_genkey_0`, ....
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Protocol
from urllib.parse import parse_qs

from gateway.model import ForwardPlan, Headers, RequestView, header_values
from gateway.routing.factory import ArgValue, Definition, SpecError, bind

GROUPS = {"filter": "wsgate.filters", "predicate": "wsgate.predicates", "key_resolver": "wsgate.key_resolvers"}


@dataclass(frozen=True, slots=True)
class Response:
    """An answer a filter gives instead of forwarding: status, body (bytes, text, or JSON for a dict/list)."""

    status: int
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: Headers = ()
    content_type: str | None = None  # None: from the body's type

    def encoded(self) -> tuple[bytes, str]:
        """The body's bytes and content type."""
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if self.content_type is not None:
            return (self.body if isinstance(self.body, str) else json.dumps(self.body)).encode(), self.content_type
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), "application/json"


@dataclass(slots=True)
class Exchange:
    """What a plugin sees of one request, after the built-in filters before it ran.

    Read: `method`, `path` (as it will be forwarded), `original_path`, `query`, `remote_addr`, `route_id`,
    `variables` (URI template variables of the route's predicates). Change: the request headers sent upstream,
    through `set_header`, `add_header` and `remove_header` (the only thing a filter may change).
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    remote_addr: str
    route_id: str = ""
    original_path: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def of(request: RequestView, *, route_id: str = "", path: str | None = None, query: str | None = None,
           headers: Headers | None = None, variables: dict[str, str] | None = None) -> Exchange:
        """An exchange for `request` (with the path, query and headers the filters produced, when given)."""
        return Exchange(request.method, request.raw_path if path is None else path,
                        request.query if query is None else query,
                        list(request.headers if headers is None else headers), request.remote_addr, route_id,
                        request.raw_path, dict(variables or {}))

    def header(self, name: str) -> str | None:
        """The first value of a request header, or None."""
        values = header_values(self.headers, name)
        return values[0] if values else None

    def query_param(self, name: str) -> str | None:
        """The first value of a query parameter (decoded), or None."""
        values = parse_qs(self.query, keep_blank_values=True).get(name)
        return values[0] if values else None

    def set_header(self, name: str, value: str) -> None:
        """Replace every value of a request header."""
        self.remove_header(name)
        self.add_header(name, value)

    def add_header(self, name: str, value: str) -> None:
        """Add a request header value."""
        if any(ch in name + value for ch in "\r\n\0") or not name:
            raise ValueError("header name or value holds CR, LF or NUL")
        self.headers.append((name, value))

    def remove_header(self, name: str) -> None:
        """Remove every value of a request header."""
        lname = name.lower()
        self.headers[:] = [(k, v) for k, v in self.headers if k.lower() != lname]


class PluginFilterObject(Protocol):
    """What a filter factory returns."""

    def filter(self, exchange: Exchange) -> Awaitable[Response | None]: ...


def find_factory(kind: str, name: str) -> Callable[..., Any] | None:
    """The factory registered as `name` in the entry-point group of `kind`, or None."""
    for entry in entry_points(group=GROUPS[kind], name=name):
        loaded: Callable[..., Any] = entry.load()
        return loaded
    return None


def _args(factory: Callable[..., Any], definition: Definition) -> dict[str, ArgValue]:
    fields = tuple(getattr(factory, "shortcut_fields", ()))
    if fields:
        named = {key for key, _ in definition.args if not key.startswith("_genkey_")}
        bound = bind(Definition(definition.name, definition.args), (*fields, *named))
        spelled = {key.replace("-", "").replace("_", "").lower(): key for key in (*fields, *named)}
        return {spelled.get(key, key): value for key, value in bound.items()}
    return dict(definition.args)


def _create(kind: str, definition: Definition) -> Any | None:
    factory = find_factory(kind, definition.name)
    if factory is None:
        return None
    try:
        return factory(_args(factory, definition))
    except SpecError:
        raise
    except Exception as exc:  # a plugin's own refusal of its arguments
        raise SpecError(f"plugin {definition.name} refused its arguments: {exc}") from None


@dataclass(frozen=True, slots=True)
class PluginFilter:
    """A plugin filter in a route's chain; it runs in the server (it may wait), after the built-in filters."""

    name: str
    plugin: PluginFilterObject
    text: str

    def apply(self, state: object) -> None:
        """Nothing to do while the plan is built: `run` does the work."""

    def describe(self) -> str:
        return self.text

    async def run(self, exchange: Exchange) -> Response | None:
        """The plugin's answer, or None to forward (with whatever headers it changed)."""
        return await self.plugin.filter(exchange)


@dataclass(frozen=True, slots=True)
class PluginPredicate:
    """A plugin predicate: `test` calls the plugin with the request as an Exchange."""

    name: str
    check: Callable[[Exchange], bool]
    text: str

    def test(self, ctx: Any) -> bool:
        return bool(self.check(Exchange.of(ctx.request, route_id=ctx.route_id, variables=ctx.variables)))

    def describe(self) -> str:
        return self.text


def _text(definition: Definition) -> str:
    args = ", ".join(f"{k}={v}" for k, v in definition.args)
    return f"[{definition.name} {args}]" if args else f"[{definition.name}]"


def plugin_filter(definition: Definition) -> PluginFilter | None:
    """A plugin filter for `definition`, or None when no plugin has its name."""
    created = _create("filter", definition)
    if created is None:
        return None
    if not callable(getattr(created, "filter", None)):
        raise SpecError(f"plugin {definition.name} has no filter(exchange) method")
    return PluginFilter(definition.name, created, _text(definition))


def plugin_predicate(definition: Definition) -> PluginPredicate | None:
    """A plugin predicate for `definition`, or None when no plugin has its name."""
    created = _create("predicate", definition)
    if created is None:
        return None
    if not callable(created):
        raise SpecError(f"plugin {definition.name} did not return a callable")
    return PluginPredicate(definition.name, created, _text(definition))


_RESOLVERS: dict[str, Callable[[Exchange], str | None]] = {}


def key_resolver(name: str) -> Callable[[Exchange], str | None] | None:
    """The key resolver registered as `name` (a `#{@name}` bean in YAML), created once per process, or None."""
    found = _RESOLVERS.get(name)
    if found is None:
        created = _create("key_resolver", Definition(name))
        if not callable(created):
            return None
        found = _RESOLVERS[name] = created
    return found


async def run_plugin_filters(
    filters: tuple[object, ...], request: RequestView, plan: ForwardPlan, route_id: str
) -> tuple[ForwardPlan, Response | None]:
    """Run the route's plugin filters in chain order: the plan with their header changes, or the first answer."""
    plugins = [f for f in filters if isinstance(f, PluginFilter)]
    if not plugins:
        return plan, None
    exchange = Exchange.of(request, route_id=route_id, path=plan.path, query=plan.query, headers=plan.headers,
                           variables=dict(plan.variables))
    for plugin in plugins:
        answer = await plugin.run(exchange)
        if answer is not None:
            return plan, answer
    return replace(plan, headers=tuple(exchange.headers)), None
