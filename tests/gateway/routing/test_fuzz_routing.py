"""Property tests: bad input gives a clear error, never a crash."""

from __future__ import annotations

import contextlib
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.javaregex import JavaRegexError, compile_java_regex
from gateway.config.loader import load_config_text
from gateway.config.model import GatewayConfig, RouteSpec, parse_upstream
from gateway.errors import BadRequest, ConfigError
from gateway.model import RequestView
from gateway.routing.factory import Definition, SpecError
from gateway.routing.filters import build_filter
from gateway.routing.pathpattern import PathPattern, PathPatternError
from gateway.routing.predicates import build_predicate
from gateway.routing.table import RouteTable

FUZZ = settings(max_examples=200, deadline=None)

_TOKENS = [
    "routes:", "spring:", "  cloud:", "    gateway:", "- id: r", "  - id: a", "    uri: ", "lb://s", "lb:ws://s",
    "http://h:1", "predicates:", "filters:", "  - Path=/a/**", "- RewritePath=/(?<p>.*), /$\\{p}", "${a.b}",
    "${X:1}", "order: ", "metadata:", "  connect-timeout: ", "wsgate:", "  head-timeout: 1s", "server:",
    "  port: ", "discovery:", "  consul:", "    address: ", "loadbalancer:", "  default: hash", "name: ",
    "args:", "_genkey_0: x", "&a", "*a", "<<: *a", "[", "]", "{", "}", ":", "- ", "  ", "\t", "'", '"', "#",
    "---", "...", "!!binary", "!!python/object:os.system", "%YAML 1.1", "\\", "Weight=g, x", "Host={h}",
]

yamlish = st.lists(
    st.one_of(st.sampled_from(_TOKENS), st.text(max_size=12)), max_size=40
).map(lambda parts: "".join(p if p.endswith((":", " ")) else p + "\n" for p in parts))

paths = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(["/", "a", "..", ".", "%2e", "%2F", "%0d%0a", "%", "%zz", ";x=1", "ws-svc", "?", "é"]),
             max_size=12).map("".join),
)
pattern_parts = st.lists(
    st.sampled_from(["/", "a", "*", "**", "?", "{v}", "{w:\\d+}", "{*r}", "{", "}", "x{y}z", ":", "\\"]), max_size=8
).map("".join)


@FUZZ
@given(yamlish)
def test_fuzz_loader_raises_only_config_errors(text: str) -> None:
    try:
        config = load_config_text(text, file="fuzz.yaml", env={})
    except ConfigError as error:
        assert error.file == "fuzz.yaml"
        return
    assert isinstance(config, GatewayConfig)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_loader_arbitrary_text(text: str) -> None:
    with contextlib.suppress(ConfigError):
        load_config_text(text, file="fuzz.yaml", env={})


@FUZZ
@given(pattern_parts, paths)
def test_fuzz_pathpattern_never_crashes(pattern: str, path: str) -> None:
    try:
        compiled = PathPattern(pattern)
    except PathPatternError:
        return
    result = compiled.match(path)
    assert result is None or isinstance(result, dict)


@FUZZ
@given(st.text(max_size=30))
def test_fuzz_java_regex_refuses_cleanly(source: str) -> None:
    with contextlib.suppress(JavaRegexError):
        compile_java_regex(source)


_TABLE = RouteTable(GatewayConfig(routes=(
    RouteSpec("seed", parse_upstream("lb:ws://ws-service"),
              predicates=(build_predicate(Definition.shortcut("Path=/ws-svc/**")),),
              filters=(build_filter(Definition.shortcut("RewritePath=/ws-svc/(?<path>.*), /$\\{path}")),)),
    RouteSpec("set", parse_upstream("http://h:1"),
              predicates=(build_predicate(Definition.shortcut("Path=/set/{seg}")),),
              filters=(build_filter(Definition.shortcut("SetPath=/x/{seg}")),
                       build_filter(Definition.shortcut("AddRequestHeader=X-Seg, {seg}")))),
    RouteSpec("strip", parse_upstream("http://h:1"),
              predicates=(build_predicate(Definition.shortcut("Path=/**")),),
              filters=(build_filter(Definition.shortcut("StripPrefix=1")),
                       build_filter(Definition.shortcut("PrefixPath=/p")))),
)))


@FUZZ
@given(st.one_of(paths.map(lambda p: "/" + p), paths.map(lambda p: "/ws-svc/" + p), paths.map(lambda p: "/set/" + p)),
       st.text(max_size=10))
def test_fuzz_rewrite_results_are_safe(path: str, query: str) -> None:
    request = RequestView("GET", path, query)
    match = _TABLE.match(request)
    assert match is not None
    try:
        plan = match.plan(request)
    except BadRequest:
        return
    assert plan.path.startswith("/")
    assert not any(ch in plan.path for ch in "\r\n\0 ?#")
    assert "\r" not in unquote(plan.path) and "\n" not in unquote(plan.path)
    depth = 0
    for segment in plan.path.split("/")[1:]:
        decoded = unquote(segment)
        depth += -1 if decoded == ".." else (0 if decoded in ("", ".") else 1)
        assert depth >= 0
    assert all("\r" not in v and "\n" not in v for _, v in plan.headers)


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_shortcut_definitions_refuse_cleanly(text: str) -> None:
    with contextlib.suppress(SpecError):
        build_predicate(Definition.shortcut(text))
    with contextlib.suppress(SpecError):
        build_filter(Definition.shortcut(text))
