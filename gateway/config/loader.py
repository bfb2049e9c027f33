"""routes.yaml -> GatewayConfig; the only module that imports yaml. Every bad input is a ConfigError naming
the file, the line and the key.

Accepted keys (names compare in Spring's relaxed form: `passing-only` == `passingOnly` == `passing_only`):

Whole Spring files (gateway.config.springdocs): several documents, profiles (`spring.config.activate.on-profile`,
`spring.profiles`), dotted and indexed keys, all merged first; every key under spring.cloud.gateway is checked
(gateway.config.scgkeys); `wsgate.unknown-filters: warn` turns what wsgate does not implement into warnings.
docs/routes.md.

Routes (Spring Cloud Gateway's syntax; the first of these that is present is used, giving two is an error):
    routes:  |  spring.cloud.gateway.routes:  |  spring.cloud.gateway.server.{webflux,webmvc}.routes:
      - id: ws-svc                      # optional, default route-<n>; unique (or one line: `id=uri, Path=/a/**`)
        enabled: true                   # false leaves the route out
        uri: lb:ws://ws-service         # http|https|ws|wss://host[:port], lb://name, lb:ws://name, lb:http(s)://name
        order: 0                        # lower first; ties keep file order
        predicates: [Path=/ws-svc/**]   # shortcut `Name=a, b` or expanded {name: Path, args: {patterns: [...]}}
        filters: [StripPrefix=1]        # same two notations; shortcut values bind like SCG's _genkey_N
        metadata:
          connect-timeout: 2000         # ms as in SCG, or a duration string ("2s")
          response-timeout: 5000        # ms or duration; -1: no bound (also for connect-timeout)
          idle-timeout: 60000           # ms or duration
          load-balancer: hash:header:X-User   # or {algorithm: hash, hash-on: "cookie:SESSION"}
          retries: 1
          any-other-key: value          # kept as extra metadata (shown by the actuator)
    default-filters: [...]              # also spring.cloud.gateway[.server.webflux].default-filters

Predicates: Path, Host, Method, Header, Query, Cookie, After, Before, Between, RemoteAddr, Weight.
Filters: RewritePath, StripPrefix, PrefixPath, SetPath, Add/Set/RemoveRequestHeader,
Add/Set/RemoveResponseHeader, PreserveHostHeader, RequestRateLimiter (see gateway.routing.filters for the full list).
Other names: plugins from the entry-point groups wsgate.filters / wsgate.predicates (gateway.plugins).
spring.cloud.gateway.discovery.locator: a route per Consul service (gateway.config.locator).

Server and tunables (wsgate's own section wins over the Spring keys):
    server: {host: 0.0.0.0, port: 8080, address: <alias of host>,
             ssl: {certificate: cert.pem, certificate-private-key: key.pem}}
    spring.cloud.gateway[.server.webflux].httpclient: {connect-timeout: 5000 (ms), response-timeout: 30s,
                                                       ssl: {use-insecure-trust-manager: false}}
    wsgate: {head-timeout: 10s, tls: {cert: cert.pem, key: key.pem}, redis: {url: ..., prefix: ...}, ...}
      every key, its default and environment fallback: gateway.config.settings_table (listed in docs/gateway.md)
    Durations: "10s", "500ms", "1m", "1h", "PT5S" or a bare number (seconds in `wsgate:`, ms in Spring keys
    and route metadata).

Discovery (a file that names none uses env CONSUL_HTTP_ADDR if set, else 127.0.0.1:8500 when a route is lb://):
    discovery:
      consul: {address: "host:port" | "http://host:port", token: ..., passing-only: true, datacenter: dc1}
    spring.cloud.consul: {host: localhost, port: 8500, scheme: http, token: ...}
    A missing token is read from env CONSUL_HTTP_TOKEN.

Load balancing:
    loadbalancer:
      default: round-robin            # round-robin | least-connections | random | hash[:header:X|cookie:X|...]
      services:
        ws-service: {algorithm: hash, hash-on: "header:X-User"}   # or the short string "hash:header:X-User"

Placeholders: `${a.b.c}` is another key of this file, then an environment variable (exact name, then the
relaxed A_B_C form), `${NAME:default}` gives a default; `\\${x}` is a literal. In a RewritePath definition a
`${name}` that names one of its regex groups is the group (SCG's `$\\{name}` spelling works too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from gateway.config import environment
from gateway.config.cors_settings import read_breakers, read_globalcors
from gateway.config.locator import LocatorSettings, ServiceInfo, SpelError, route_for
from gateway.config.model import (
    ConsulSettings,
    GatewayConfig,
    LoadBalancerSettings,
    RouteSpec,
    ServerSettings,
)
from gateway.config.nodes import Reader, YMap, YNode, YScalar, YSeq, find
from gateway.config.routes import RouteReader, balancer_choice, build_any_filter, build_any_predicate
from gateway.config.scgkeys import check_gateway_keys
from gateway.config.settings_table import read_value, read_wsgate, setting
from gateway.config.springdocs import merge_documents
from gateway.errors import ConfigError
from gateway.model import BalancerChoice
from gateway.routing.factory import SpecError, relaxed

_MAX_NODES = 200_000

_CONSUL_KEYS = ("address", "host", "port", "scheme", "token", "passing-only", "datacenter")
_SCG_ROOTS = (
    "spring.cloud.gateway.server.webflux", "spring.cloud.gateway.server.webmvc", "spring.cloud.gateway.mvc",
    "spring.cloud.gateway",
)  # fmt: skip


def load_config(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    profiles: Sequence[str] | None = None,
    unknown_filters: str | None = None,
) -> GatewayConfig:
    """Read, validate and compile routes.yaml; ConfigError (file, line, key) for anything unusable.

    `profiles` are the active Spring profiles (else SPRING_PROFILES_ACTIVE, else the file's); `unknown_filters`
    (`fail` or `warn`; else WSGATE_UNKNOWN_FILTERS, which `--unknown-filters` sets for the workers and the master's
    reload checks) overrides the file's `wsgate.unknown-filters`.
    """
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=file) from None
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", file=file) from None
    environ = environment.current() if env is None else env
    mode = unknown_filters or environment.unknown_filters(environ)
    return load_config_text(text, file=file, env=environ, profiles=profiles, unknown_filters=mode)


def load_config_text(
    text: str,
    *,
    file: str = "<string>",
    env: Mapping[str, str] | None = None,
    profiles: Sequence[str] | None = None,
    unknown_filters: str | None = None,
) -> GatewayConfig:
    """Like load_config for text already read (tests, reload checks)."""
    process_env = environment.current() if env is None else env
    root, active = merge_documents(_parse_yaml(text, file), file=file, env=process_env, profiles=profiles)
    reader = Reader(file, root, process_env)
    row = setting("unknown-filters")
    mode_node = find(root, "wsgate.unknown-filters")
    mode = unknown_filters or (read_value(reader, row, mode_node) if mode_node else row.default)
    if mode not in row.choices:
        raise reader.error(f"must be {' or '.join(row.choices)}, not {mode!r}", mode_node, "wsgate.unknown-filters")
    reader.warn_unknown = mode == "warn"
    return _build(reader, root, active)


def _parse_yaml(text: str, file: str) -> list[YNode]:
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=file, line=line) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None
    converter = _Converter(file)
    return [converter.convert(node, ()) for node in nodes if node is not None]


class _Converter:
    """yaml nodes -> YNode tree: merge keys applied, duplicates, recursion and alias bombs refused."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0

    def convert(self, node: yaml.Node, active: tuple[int, ...]) -> YNode:
        self.count += 1
        line = node.start_mark.line + 1
        if self.count > _MAX_NODES:
            raise ConfigError("the document is too large (alias expansion?)", file=self.file, line=line)
        if id(node) in active or len(active) > 100:
            raise ConfigError("recursive or too deeply nested structure", file=self.file, line=line)
        inner = (*active, id(node))
        if isinstance(node, yaml.ScalarNode):
            return YScalar(None if node.tag == "tag:yaml.org,2002:null" else str(node.value), line)
        if isinstance(node, yaml.SequenceNode):
            return YSeq(tuple(self.convert(item, inner) for item in node.value), line)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, inner, line)
        raise ConfigError("unsupported YAML node", file=self.file, line=line)

    def _mapping(self, node: yaml.MappingNode, inner: tuple[int, ...], line: int) -> YMap:
        items: list[tuple[str, YNode]] = []
        merged: list[tuple[str, YNode]] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError("keys must be plain values", file=self.file, line=key_line)
            value = self.convert(value_node, inner)
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value.items if isinstance(value, YSeq) else (value,)
                for source in sources:
                    if not isinstance(source, YMap):
                        raise ConfigError("'<<' must merge sections", file=self.file, line=key_line)
                    merged.extend(source.items)
                continue
            key = str(key_node.value)
            if any(existing == key for existing, _ in items):
                raise ConfigError("duplicate key", file=self.file, line=key_line, key=key)
            items.append((key, value))
        names = {key for key, _ in items}
        for key, value in merged:
            if key not in names:
                names.add(key)
                items.append((key, value))
        return YMap(tuple(items), line)


def _first(root: YMap, reader: Reader, *paths: str) -> tuple[str, YNode] | None:
    found = [(p, n) for p in paths if (n := find(root, p)) is not None]
    if len(found) > 1:
        raise reader.error(f"given twice: {found[0][0]} and {found[1][0]}", found[1][1], found[1][0])
    return found[0] if found else None


def _build(reader: Reader, root: YMap, profiles: tuple[str, ...]) -> GatewayConfig:
    check_gateway_keys(reader, root)
    routes_reader = RouteReader(reader)
    routes_at = _first(root, reader, "routes", *(f"{r}.routes" for r in _SCG_ROOTS))
    defaults_at = _first(root, reader, "default-filters", *(f"{r}.default-filters" for r in _SCG_ROOTS))
    default_filters = routes_reader.filters(defaults_at[1], defaults_at[0]) if defaults_at else ()
    routes: tuple[RouteSpec, ...] = ()
    routes_map = _first(root, reader, *(f"{r}.routes-map" for r in _SCG_ROOTS))
    if routes_at or routes_map:
        routes = routes_reader.routes(routes_at[1] if routes_at else None, routes_at[0] if routes_at else "routes",
                                      (routes_map[1], routes_map[0]) if routes_map else None)
    server = _server(reader, root)
    loadbalancer = _loadbalancer(reader, find(root, "loadbalancer"))
    locator = _locator(reader, root, routes_reader)
    uses_lb = locator is not None or any(r.uri.service is not None for r in routes)
    discovery = _discovery(reader, root, uses_lb)
    cors, breakers = read_globalcors(reader, root), read_breakers(reader, root)
    try:
        return GatewayConfig(
            server, routes, default_filters, discovery, loadbalancer, reader.file, cors, breakers,
            locator=locator, warnings=tuple(reader.warnings), profiles=profiles,
        )  # fmt: skip
    except ValueError as exc:
        raise reader.error(str(exc), routes_at[1] if routes_at else None, routes_at[0] if routes_at else "") from None


_LOCATOR_KEYS = ("enabled", "lower-case-service-id", "include-expression", "url-expression", "route-id-prefix",
                 "predicates", "filters")


def _locator(reader: Reader, root: YMap, routes_reader: RouteReader) -> LocatorSettings | None:
    """`discovery.locator` when enabled; its expressions are tried on a sample service so errors name their line."""
    found = _first(root, reader, *(f"{r}.discovery.locator" for r in _SCG_ROOTS))
    if found is None:
        return None
    key, node = found
    section = reader.mapping(node, key)
    for name, child in section.items:
        if relaxed(name) not in {relaxed(k) for k in _LOCATOR_KEYS}:
            reader.unknown("not a discovery.locator property wsgate implements", child, f"{key}.{name}")
    enabled = section.get("enabled")
    if enabled is None or not reader.boolean(enabled, f"{key}.enabled"):
        return None
    values: dict[str, object] = {}
    if (lower := section.get("lower-case-service-id")) is not None:
        values["lower_case_service_id"] = reader.boolean(lower, f"{key}.lower-case-service-id")
    for name in ("include-expression", "url-expression", "route-id-prefix"):
        if (text_node := section.get(name)) is not None:
            values[name.replace("-", "_")] = reader.text(text_node, f"{key}.{name}", keep=frozenset(["remaining"]))
    for name in ("predicates", "filters"):
        if (list_node := section.get(name)) is not None:
            values[name] = tuple(d for (d, _), _ in routes_reader.definitions(list_node, f"{key}.{name}"))
    settings = LocatorSettings(enabled=True, **values)  # type: ignore[arg-type]
    try:
        route_for(settings, ServiceInfo("service"), build_any_predicate, build_any_filter)
    except (SpelError, SpecError, ValueError) as exc:
        raise reader.error(f"discovery.locator: {exc}", node, key) from None
    return settings


def _server(reader: Reader, root: YMap) -> ServerSettings:
    values: dict[str, object] = {}
    server = find(root, "server")
    if server is not None:
        section = reader.mapping(server, "server")
        host = section.get("host") or section.get("address")
        if host is not None:
            values["host"] = reader.text(host, "server.host")
        if (port := section.get("port")) is not None:
            values["port"] = reader.integer(port, "server.port")
        if (cert := find(section, "ssl.certificate")) is not None:
            values["tls_cert_path"] = reader.text(cert, "server.ssl.certificate")
        if (key := find(section, "ssl.certificate-private-key")) is not None:
            values["tls_key_path"] = reader.text(key, "server.ssl.certificate-private-key")
    httpclient = _first(root, reader, *(f"{r}.httpclient" for r in _SCG_ROOTS))
    if httpclient:
        section = reader.mapping(httpclient[1], httpclient[0])
        if (node := section.get("connect-timeout")) is not None:
            values["connect_timeout_s"] = reader.duration_s(node, f"{httpclient[0]}.connect-timeout", default_unit="ms",
                                                            off=True)
        if (node := section.get("response-timeout")) is not None:
            values["response_timeout_s"] = reader.duration_s(
                node, f"{httpclient[0]}.response-timeout", default_unit="ms", off=True
            )
        if (node := find(section, "ssl.use-insecure-trust-manager")) is not None:
            insecure = reader.boolean(node, f"{httpclient[0]}.ssl.use-insecure-trust-manager")
            values["upstream_tls_verify"] = not insecure
    wsgate = find(root, "wsgate")
    if wsgate is not None:
        values.update(read_wsgate(reader, reader.mapping(wsgate, "wsgate")))
    try:
        return ServerSettings(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise reader.error(str(exc), server or wsgate, "server") from None


def _discovery(reader: Reader, root: YMap, uses_lb: bool) -> ConsulSettings | None:
    env_token = environment.consul_token(reader.env)
    consul = find(root, "discovery.consul")
    spring = find(root, "spring.cloud.consul")
    if consul is not None:
        section = reader.mapping(consul, "discovery.consul")
        reader.check_keys(section, "discovery.consul", _CONSUL_KEYS)
        return _consul_from(reader, section, "discovery.consul", env_token)
    if spring is not None:
        return _consul_from(reader, reader.mapping(spring, "spring.cloud.consul"), "spring.cloud.consul", env_token)
    address = environment.consul_address(reader.env)
    if address:
        try:
            return ConsulSettings.from_address(address, token=env_token)
        except ValueError as exc:
            raise ConfigError(f"environment {environment.CONSUL_ADDR}: {exc}", file=reader.file) from None
    return ConsulSettings(token=env_token) if uses_lb else None


def _consul_from(reader: Reader, section: YMap, key: str, env_token: str | None) -> ConsulSettings:
    token = reader.optional_text(section.get("token"), f"{key}.token") or env_token
    passing = section.get("passing-only")
    passing_only = reader.boolean(passing, f"{key}.passing-only") if passing is not None else True
    datacenter = reader.optional_text(section.get("datacenter"), f"{key}.datacenter")
    address = section.get("address")
    try:
        if address is not None:
            return ConsulSettings.from_address(
                reader.text(address, f"{key}.address"), token=token, passing_only=passing_only, datacenter=datacenter
            )
        host = reader.optional_text(section.get("host"), f"{key}.host") or "127.0.0.1"
        port_node = section.get("port")
        port = reader.integer(port_node, f"{key}.port") if port_node is not None else 8500
        scheme = reader.optional_text(section.get("scheme"), f"{key}.scheme") or "http"
        return ConsulSettings(host, port, scheme, token, passing_only, datacenter)
    except ValueError as exc:
        raise reader.error(str(exc), address or section, f"{key}.address" if address else key) from None


def _loadbalancer(reader: Reader, node: YNode | None) -> LoadBalancerSettings:
    if node is None:
        return LoadBalancerSettings()
    section = reader.mapping(node, "loadbalancer")
    reader.check_keys(section, "loadbalancer", ("default", "services"))
    default_node = section.get("default")
    default = balancer_choice(reader, default_node, "loadbalancer.default") if default_node else BalancerChoice()
    services: dict[str, BalancerChoice] = {}
    if (services_node := section.get("services")) is not None:
        for name, child in reader.mapping(services_node, "loadbalancer.services").items:
            services[name] = balancer_choice(reader, child, f"loadbalancer.services.{name}")
    return LoadBalancerSettings(default, services)


__all__ = ["load_config", "load_config_text"]
