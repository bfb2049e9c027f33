"""routes.yaml -> GatewayConfig: SCG's notations, placeholders, sections, and errors naming file:line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.config.model import ConsulSettings, GatewayConfig
from gateway.errors import ConfigError
from gateway.model import BalancerChoice, Balancing, HeaderOp, RequestView, Upstream
from gateway.routing.table import RouteTable

SEED = r"""
service:
  uri:
    ws-svc: lb:ws://ws-service
routes:
  - id: ws-svc
    uri: ${service.uri.ws-svc}
    predicates:
      - Path=/ws-svc/**
    filters:
      - RewritePath=/ws-svc/(?<path>.*), /$\{path}
"""


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, env=env or {})


def forward(config: GatewayConfig, path: str, query: str = "") -> str | None:
    request = RequestView("GET", path, query)
    match = RouteTable(config).match(request)
    return match.plan(request).target if match else None


def test_loader_seed_route_works_verbatim(tmp_path: Path) -> None:
    config = load(tmp_path, SEED)
    (route,) = config.routes
    assert (route.id, route.uri, route.line) == ("ws-svc", Upstream("ws", service="ws-service"), 6)
    assert forward(config, "/ws-svc/websocket", "token=abc") == "/websocket?token=abc"
    assert forward(config, "/elsewhere") is None
    assert config.services == frozenset({"ws-service"})
    # An lb:// route and no Consul in the file or environment: the local agent.
    assert config.discovery == ConsulSettings()


def test_loader_rewrite_group_spelled_without_backslash(tmp_path: Path) -> None:
    config = load(tmp_path, SEED.replace(r"/$\{path}", "/${path}"))
    assert forward(config, "/ws-svc/a/b") == "/a/b"


@pytest.mark.parametrize("root", ["spring.cloud.gateway", "spring.cloud.gateway.server.webflux"])
def test_loader_reads_scg_application_yml_sections(tmp_path: Path, root: str) -> None:
    parts = root.split(".")
    head = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parts))
    pad = "  " * len(parts)
    text = head + textwrap.indent(textwrap.dedent("""
        default-filters:
          - AddResponseHeader=X-Response-Default-Red, Default-Blue
        routes:
          - id: add_request_header_route
            uri: https://example.org
            predicates:
              - Path=/red/{segment}
            filters:
              - AddRequestHeader=X-Request-Red, Blue-{segment}
        """), pad)
    config = load(tmp_path, text)
    assert [r.id for r in config.routes] == ["add_request_header_route"]
    assert len(config.default_filters) == 1
    request = RequestView("GET", "/red/7")
    match = RouteTable(config).match(request)
    assert match is not None
    plan = match.plan(request)
    assert plan.headers == (("X-Request-Red", "Blue-7"),)
    assert [op.name for op in plan.response_headers if isinstance(op, HeaderOp)] == ["X-Response-Default-Red"]
    assert len(plan.response_headers) == 1


def test_loader_flat_dotted_keys_and_expanded_notation(tmp_path: Path) -> None:
    config = load(tmp_path, r"""
        spring.cloud.gateway.routes:
          - id: rewritepath_route
            uri: https://example.org
            predicates:
              - name: Path
                args:
                  patterns: [/red/**]
                  matchTrailingSlash: false
            filters:
              - name: RewritePath
                args:
                  regexp: /red/?(?<segment>.*)
                  replacement: /$\{segment}
              - name: AddRequestHeader
                args:
                  _genkey_0: X-A
                  _genkey_1: b
    """)
    assert forward(config, "/red/blue") == "/blue"
    assert config.routes[0].predicates[0].describe() == "Paths: [/red/**], match trailing slash: false"


def test_loader_placeholders_keys_env_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, r"""
        app:
          host: ${UPSTREAM_HOST:localhost}
          port: 9000
          base: http://${app.host}:${app.port}
          escaped: \${not.a.placeholder}
        server:
          port: ${GATEWAY_PORT}
        routes:
          - id: r1
            uri: ${app.base}
            predicates: ["Header=X-Lit, ${app.escaped}"]
          - id: r2
            uri: ${service.other-uri}
    """, env={"GATEWAY_PORT": "9090", "SERVICE_OTHERURI": "lb://other"})
    assert config.server.port == 9090
    assert config.routes[0].uri == Upstream("http", "localhost", 9000)
    assert config.routes[1].uri == Upstream("http", service="other")
    assert "${not.a.placeholder}" in config.routes[0].predicates[0].describe()


def test_loader_server_and_tunables(tmp_path: Path) -> None:
    config = load(tmp_path, """
        server:
          host: 127.0.0.1
          port: 9443
        spring:
          cloud:
            gateway:
              httpclient:
                connect-timeout: 1500
                response-timeout: 5s
                ssl:
                  useInsecureTrustManager: true
        wsgate:
          workers: 2
          head-timeout: 500ms
          max-head-bytes: 8192
          max-connections: 20000
          idle-timeout: 1m
          drain-timeout: 0
          admin-token: s3cret
          tls: {cert: /c.pem, key: /k.pem}
          upstream-ca: /ca.pem
          access-log: off
          native-relay: false
    """)
    s = config.server
    assert (s.host, s.port, s.workers, s.head_timeout_s, s.max_head_bytes, s.max_connections) == (
        "127.0.0.1", 9443, 2, 0.5, 8192, 20000)
    assert (s.connect_timeout_s, s.response_timeout_s, s.idle_timeout_s, s.drain_timeout_s) == (1.5, 5.0, 60.0, 0.0)
    assert (s.admin_token, s.tls_cert_path, s.tls_key_path, s.upstream_ca_path) == ("s3cret", "/c.pem", "/k.pem",
                                                                                     "/ca.pem")
    assert (s.upstream_tls_verify, s.access_log, s.native_relay) == (False, False, False)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("discovery:\n  consul:\n    address: 10.1.1.1:8600\n    token: t\n    passing-only: false\n", {},
         ConsulSettings("10.1.1.1", 8600, "http", "t", False)),
        ("discovery:\n  consul:\n    address: ${CONSUL_HTTP_ADDR:127.0.0.1:8500}\n", {},
         ConsulSettings("127.0.0.1", 8500)),
        ("discovery:\n  consul:\n    address: ${CONSUL_HTTP_ADDR:127.0.0.1:8500}\n",
         {"CONSUL_HTTP_ADDR": "https://c.example:8501"}, ConsulSettings("c.example", 8501, "https")),
        ("spring:\n  cloud:\n    consul:\n      host: consul\n      port: 8502\n", {},
         ConsulSettings("consul", 8502)),
        ("routes: []\n", {"CONSUL_HTTP_ADDR": "10.0.0.9:8500", "CONSUL_HTTP_TOKEN": "tok"},
         ConsulSettings("10.0.0.9", 8500, token="tok")),
        ("routes: []\n", {}, None),
    ],
)
def test_loader_discovery_sources(tmp_path: Path, text: str, env: dict[str, str],
                                  expected: ConsulSettings | None) -> None:
    assert load(tmp_path, text, env).discovery == expected


def test_loader_loadbalancer_and_route_metadata(tmp_path: Path) -> None:
    config = load(tmp_path, """
        loadbalancer:
          default: least-connections
          services:
            ws-service: {algorithm: hash, hash-on: "header:X-User"}
            other: hash:cookie:SESSION
        routes:
          - id: r
            uri: lb://ws-service
            metadata:
              connect-timeout: 200
              response-timeout: 2s
              idle-timeout: 60000
              load-balancer: random
              retries: 2
              team: push
    """)
    lb = config.loadbalancer
    assert lb.default == BalancerChoice(Balancing.LEAST_CONNECTIONS)
    assert lb.choice_for("ws-service") == BalancerChoice(Balancing.HASH, "header:X-User")
    assert lb.choice_for("other") == BalancerChoice(Balancing.HASH, "cookie:SESSION")
    meta = config.routes[0].metadata
    assert (meta.connect_timeout_s, meta.response_timeout_s, meta.idle_timeout_s) == (0.2, 2.0, 60.0)
    assert (meta.balancer, meta.retries, meta.extra) == (BalancerChoice(Balancing.RANDOM), 2, (("team", "push"),))


def test_loader_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    config = load(tmp_path, "# nothing yet\n")
    assert (config.routes, config.discovery) == ((), None)


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("routes:\n  - id: a\n    uri: http://h:1\n  predicates: [\n", 4, "", "YAML syntax error"),
        ("routes:\n  - id: a\n    uri: http://h:1\n    predicates:\n      - Paht=/x\n", 5,
         "routes[0].predicates[0]", "unknown predicate 'Paht'"),
        ("routes:\n  - id: a\n    uri: http://h:1\n    filters:\n      - RewritePath=/(?<x, /\n", 5,
         "routes[0].filters[0].regexp", "RewritePath"),
        ("routes:\n  - id: a\n    uri: http://h:1\n    filters:\n      - name: RewritePath\n        args:\n"
         "          regexp: /ok\n          replacement: /$\\{missing}\n", 8,
         "routes[0].filters[0].replacement", "missing"),
        ("routes:\n  - id: a\n    uri: gopher://h:1\n", 3, "routes[0].uri", "unsupported uri"),
        ("routes:\n  - id: a\n    uri: ${nowhere.to.be.found}\n", 3, "routes[0].uri", "unresolvable placeholder"),
        ("routes:\n  - id: a\n    uri: http://h:1\n    order: first\n", 4, "routes[0].order", "integer"),
        ("routes:\n  - id: a\n    uri: http://h:1\n  - id: a\n    uri: http://h:2\n", 4, "routes", "duplicate"),
        ("routes:\n  - id: a\n    url: http://h:1\n", 3, "routes[0].url", "unknown key"),
        ("routes:\n  - id: a\n", 2, "routes[0].uri", "no uri"),
        ("wsgate:\n  head-timeout: soon\n", 2, "wsgate.head-timeout", "not a duration"),
        ("wsgate:\n  heed-timeout: 1s\n", 2, "wsgate.heed-timeout", "unknown key"),
        ("server:\n  port: 99999\n", 2, "server", "port"),
        ("server:\n  port: 1\nserver:\n  port: 2\n", 3, "server", "duplicate key"),
        ("- a\n- b\n", 1, "", "top level"),
        ("routes: []\nspring.cloud.gateway.routes: []\n", 2, "spring.cloud.gateway.routes", "given twice"),
        ("a: &x [*x]\n", 1, "", "recursive"),
        ("a: ${b}\nb: ${a}\nroutes:\n  - uri: ${a}\n", 4, "routes[0].uri", "refers to itself"),
        ("a: ${b}${b}${b}${b}\nb: ${c}${c}${c}${c}\nc: ${d}${d}${d}${d}\nd: ${e}${e}${e}${e}\n"
         "e: ${f}${f}${f}${f}\nf: ${g}${g}${g}${g}\ng: ${h}${h}${h}${h}\nh: ${i}${i}${i}${i}\n"
         "i: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\nserver:\n  host: ${a}\n", 11, "server.host",
         "more than 65536"),
        ("loadbalancer:\n  default: fastest\n", 2, "loadbalancer.default", "unknown load-balancer"),
        ("routes:\n  - uri: lb://x\n    metadata:\n      connect-timeout: -5\n", 4,
         "routes[0].metadata.connect-timeout", "must be > 0"),
        ("discovery:\n  consul:\n    address: http://h:1/path\n", 3, "discovery.consul.address", "Consul"),
    ],
)
def test_loader_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    error = caught.value
    assert (error.file, error.line, error.key) == (str(tmp_path / "routes.yaml"), line, key)
    assert message in str(error)
    assert str(error).startswith(f"{tmp_path / 'routes.yaml'}:{line}")


def test_loader_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(tmp_path / "absent.yaml", env={})
    assert caught.value.file == str(tmp_path / "absent.yaml")


def test_loader_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_bytes(b"routes: \xff\xfe\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, env={})


def test_loader_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_TEST_PORT", "8123")
    path = tmp_path / "routes.yaml"
    path.write_text("server:\n  port: ${WSGATE_TEST_PORT}\n")
    assert load_config(path).server.port == 8123


def test_loader_shipped_routes_yaml_loads() -> None:
    config = load_config(Path(__file__).resolve().parents[3] / "routes.yaml", env={})
    assert [r.id for r in config.routes] == ["ws-svc"]
    assert config.server.port == 8080
    assert config.discovery == ConsulSettings("127.0.0.1", 8500)
    assert forward(config, "/ws-svc/websocket") == "/websocket"


UNKNOWN_FILTER = "routes:\n  - id: a\n    uri: http://h:1\n    filters: [SomethingUnknown=1]\n"


@pytest.mark.parametrize(("env", "argument", "warns"), [
    ({}, None, False),
    ({"WSGATE_UNKNOWN_FILTERS": "warn"}, None, True),  # what a worker and the master's reload check inherit
    ({"WSGATE_UNKNOWN_FILTERS": "warn"}, "fail", False),
    ({"WSGATE_UNKNOWN_FILTERS": "fail"}, "warn", True),
])
def test_loader_unknown_filters_from_the_argument_else_the_environment(
        tmp_path: Path, env: dict[str, str], argument: str | None, warns: bool) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(UNKNOWN_FILTER)
    if warns:
        assert "SomethingUnknown" in load_config(path, env=env, unknown_filters=argument).warnings[0]
    else:
        with pytest.raises(ConfigError, match="unknown filter 'SomethingUnknown'"):
            load_config(path, env=env, unknown_filters=argument)
