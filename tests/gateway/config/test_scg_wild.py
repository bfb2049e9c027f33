"""Every real Spring Cloud Gateway configuration under tests/data/scg-wild/ loads, or is refused for a named reason.

The files come from public repositories (source, path and licence on each file's first line). Each is read under
`wsgate.unknown-filters: warn`, so that what needs a team's own plugin (or a filter SCG 4.x no longer has) is a
warning naming the filter; a file whose table entry expects no warning must load under the default `fail` as well.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.errors import ConfigError

CORPUS = Path(__file__).resolve().parents[2] / "data" / "scg-wild"
# SCG's own tests set `test.uri` from the test; we give it the way a deployment would, through the environment.
ENV = {"TEST_URI": "http://127.0.0.1:9"}

# file, routes, filters that are a team's own (or gone from SCG) and so warned about, other keys warned about,
# whether discovery.locator is on.
LOADS: list[tuple[str, int, tuple[str, ...], tuple[str, ...], bool]] = [
    ("forezp-2020-chapter3.yml", 2, (), (), True),
    ("forezp-2020-chapter4.yml", 2, (), (), True),
    ("forezp-gateway-cloud.yml", 1, ("RequestTime",), (), False),
    ("forezp-gateway-filter.yml", 1, (), (), False),
    ("forezp-gateway-limiter.yml", 1, (), (), False),
    ("forezp-gateway-predicate.yml", 1, (), (), False),  # nine profile documents, `query_route` active
    ("jhipster-reactive-gateway.yml", 0, (), ("spring.cloud.gateway.httpclient.pool",), True),
    ("labs-demo01.yaml", 2, (), (), False),
    ("labs-demo02-registry.yaml", 2, (), (), True),
    ("labs-demo04.yaml", 2, (), (), False),
    ("labs-demo05-custom-filter.yaml", 2, ("Auth",), (), False),
    ("labs-demo06-rate-limiter.yaml", 2, (), (), False),
    ("labs-demo07-hystrix.yaml", 1, ("Hystrix",), (), False),  # Hystrix left SCG in 3.0
    ("labs-demo07-sentinel.yaml", 1, (), (), False),
    ("labs-sleuth-gateway.yaml", 1, (), (), False),
    ("mall-swarm-gateway.yml", 5, (), (), True),
    ("piomin-gateway-service.yml", 4, (), (), True),
    ("ruoyi-gateway-bootstrap.yml", 0, (), (), False),  # Nacos bootstrap only: the routes are the next file
    ("ruoyi-gateway-dev.yml", 5, ("ValidateCodeFilter",), (), True),
    ("sca-integrated-gateway.yaml", 6, (), (), False),
    ("sca-sentinel-gateway.yaml", 2, (), (), False),
    ("scg-cors-global.yml", 0, (), (), False),
    ("scg-cors-per-route.yml", 2, (), (), False),
    ("scg-defaultid.yml", 1, (), (), False),
    ("scg-redis-rate-limiter.yml", 2, (), (), False),
    ("scg-remote-address.yml", 2, (), ("spring.cloud.gateway.server.webflux.trusted-proxies",), False),
    ("scg-request-headers-if-not-present.yml", 2, (), (), False),
    ("scg-request-map-header.yml", 2, (), (), False),
    ("scg-request-parameter.yml", 1, (), (), False),
    ("scg-retrytests.yml", 3, (), (), False),
    ("scg-sample-secureheaders.yml", 2, (), (), False),  # its `filter:` is empty
    ("scg-sample.yml", 2, (), (), False),
    ("scg-webflux-test.yml", 56, (), (), False),
    ("sclearning-api-gateway-eureka.yml", 0, (), (), True),  # the locator is its only source of routes
    ("sclearning-api-gateway-filter.yml", 1, (), (), False),
    ("sclearning-api-gateway-predicate.yml", 1, (), (), False),
    ("sclearning-api-gateway.yml", 1, (), (), False),
    ("sclearning-knife4j-gateway.yml", 2, (), (), True),
    ("sclearning-oauth2-gateway.yml", 2, (), (), True),
    ("sclearning-sa-token-gateway.yml", 2, (), (), True),
]

# file, line, the reason (what the error says), why no gateway could load it as it is.
REFUSED: list[tuple[str, int, str, str]] = [
    ("jeecg-cloud-gateway.yml", 20, "found character '@'", "unfiltered Maven token @profile.name@"),
    ("pig-gateway.yml", 7, "found character '@'", "unfiltered Maven token @artifactId@"),
]
# Refused where SCG would load the file but drop part of it without a word; wsgate names the line instead.
REFUSED_NOT_AS_WRITTEN: list[tuple[str, int, str, str]] = [
    ("petclinic-api-gateway.yml", 46, "CircuitBreaker's shortcut form takes only its name",
     "SCG binds `name=genaiCircuitBreaker` as the breaker's name and drops `fallbackUri=/fallback`"),
    ("scg-webmvc-registrar.yml", 70, "fallbackPath must be a path",
     "SCG's own test registrar: `fallbackpath: GET,POST` is no path; SCG keeps it unchecked (and never uses it)"),
]


def _filter_warnings(warnings: tuple[str, ...]) -> set[str]:
    found = (re.search(r"unknown filter '([^']+)'|: (\w+) is refused: ", w) for w in warnings)
    return {m.group(1) or m.group(2) for m in found if m}


def test_every_corpus_file_is_in_a_table() -> None:
    named = {row[0] for row in LOADS} | {row[0] for row in REFUSED} | {row[0] for row in REFUSED_NOT_AS_WRITTEN}
    assert {p.name for p in CORPUS.iterdir()} == named
    assert len(named) >= 25


@pytest.mark.parametrize("first_line", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
def test_corpus_file_names_its_source_and_licence(first_line: Path) -> None:
    head = first_line.read_text(encoding="utf-8").splitlines()[0]
    assert re.fullmatch(r"# source: https://github\.com/[\w.-]+/[\w.-]+ \S.* \(licence: .+\)", head), head


@pytest.mark.parametrize(("name", "routes", "own", "keys", "locator"), LOADS, ids=[row[0] for row in LOADS])
def test_corpus_file_loads(name: str, routes: int, own: tuple[str, ...], keys: tuple[str, ...], locator: bool) -> None:
    config = load_config(CORPUS / name, env=ENV, unknown_filters="warn")
    assert len(config.routes) == routes
    assert (config.locator is not None) == locator
    assert _filter_warnings(config.warnings) == set(own)
    key_warnings = {w for w in config.warnings if not _filter_warnings((w,))}
    for key in keys:
        assert any(f": {key}: " in w for w in key_warnings), (key, key_warnings)
    assert len(key_warnings) <= len(keys)
    for warning in config.warnings:
        assert re.match(rf".*{re.escape(name)}:\d+: ", warning), warning
    if not config.warnings:
        load_config(CORPUS / name, env=ENV)  # nothing to warn about: loads under the default `fail` too


@pytest.mark.parametrize(("name", "line", "reason", "why"), REFUSED, ids=[row[0] for row in REFUSED])
def test_corpus_file_refused_for_a_reason_no_gateway_could_satisfy(name: str, line: int, reason: str, why: str) -> None:
    assert "@" in why
    with pytest.raises(ConfigError) as caught:
        load_config(CORPUS / name, env=ENV, unknown_filters="warn")
    assert caught.value.line == line
    assert reason in str(caught.value)


@pytest.mark.parametrize(("name", "line", "reason", "why"), REFUSED_NOT_AS_WRITTEN,
                         ids=[row[0] for row in REFUSED_NOT_AS_WRITTEN])
def test_corpus_file_refused_where_scg_would_drop_part_of_it(name: str, line: int, reason: str, why: str) -> None:
    assert why
    with pytest.raises(ConfigError) as caught:
        load_config(CORPUS / name, env=ENV, unknown_filters="warn")
    assert caught.value.line == line
    assert reason in str(caught.value)


def test_corpus_load_ratio_is_at_least_90_percent() -> None:
    total = len(LOADS) + len(REFUSED) + len(REFUSED_NOT_AS_WRITTEN)
    assert len(LOADS) / total >= 0.9
