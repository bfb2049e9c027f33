"""RequestRateLimiter's pure side: key resolution, SCG's Redis keys and script arguments, decisions and headers."""

from __future__ import annotations

import base64

import pytest

from gateway.model import Headers, RateLimit, RequestView
from gateway.ratelimit.bucket import (
    RateDecision,
    basic_auth_user,
    bucket_keys,
    check_limit,
    decide,
    empty_key_decision,
    rate_limit_headers,
    resolve_key,
    script_args,
    unavailable_decision,
)
from gateway.routing.factory import Definition
from gateway.routing.filters import build_filter
from gateway.routing.filters.rate_limiter import RequestRateLimiter


def basic(user_colon_password: str) -> str:
    return "Basic " + base64.b64encode(user_colon_password.encode()).decode()


def request(headers: Headers = (), remote_addr: str = "127.0.0.1") -> RequestView:
    return RequestView("GET", "/", headers=headers, remote_addr=remote_addr)


@pytest.mark.parametrize(("key", "req", "expected"), [
    ("client", request(remote_addr="10.1.2.3"), "10.1.2.3"),
    ("client", request(remote_addr="2001:DB8::1"), "2001:db8::1"),
    ("client", request(remote_addr="::ffff:10.1.2.3"), "10.1.2.3"),
    ("client", request(remote_addr="fe80::1%eth0"), "fe80::1"),
    ("client", request(remote_addr="unix-socket"), "unix-socket"),
    ("client", request(remote_addr=""), ""),
    ("header:X-User", request((("x-user", " alice "),)), "alice"),
    ("header:X-User", request((("X-User", "alice"), ("X-User", "bob"))), "alice"),
    ("header:X-User", request((("X-Other", "alice"),)), ""),
    ("header:X-User", request((("X-User", "   "),)), ""),
    ("principal", request((("Authorization", basic("alice:secret")),)), "alice"),
    ("principal", request((("authorization", "basic " + basic("al:ice:pw")[6:]),)), "al"),
    ("principal", request((("Authorization", basic("žofie:pw")),)), "žofie"),
    ("principal", request((("Authorization", basic(":pw")),)), ""),
    ("principal", request((("Authorization", basic("no-colon")),)), ""),
    ("principal", request((("Authorization", "Basic !!not-base64!!"),)), ""),
    ("principal", request((("Authorization", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9."),)), ""),
    ("principal", request(), ""),
])
def test_resolve_key_by_resolver(key: str, req: RequestView, expected: str) -> None:
    assert resolve_key(RateLimit(1, 1, key=key), req) == expected


@pytest.mark.parametrize("key", ["", "cookie:x", "header:", "Client"])
def test_resolve_key_rejects_unknown_resolver(key: str) -> None:
    with pytest.raises(ValueError, match="bad rate-limit key"):
        resolve_key(RateLimit(1, 1, key=key), request())


@pytest.mark.parametrize(("value", "expected"), [
    (None, ""),
    ("", ""),
    ("Basic", ""),
    ("Basic " + base64.b64encode(b"\xff\xfe:pw").decode(), ""),
    ("  BASIC " + base64.b64encode(b"u:p").decode() + " ", "u"),
])
def test_basic_auth_user_parses_or_gives_empty(value: str | None, expected: str) -> None:
    assert basic_auth_user(value) == expected


@pytest.mark.parametrize(("route_id", "key", "prefix", "expected"), [
    ("ws", "10.0.0.1", "",
     ("request_rate_limiter.{ws.10.0.0.1}.tokens", "request_rate_limiter.{ws.10.0.0.1}.timestamp")),
    ("api", "alice", "gw:",
     ("gw:request_rate_limiter.{api.alice}.tokens", "gw:request_rate_limiter.{api.alice}.timestamp")),
    ("api", "a}b", "", ("request_rate_limiter.{api.a}b}.tokens", "request_rate_limiter.{api.a}b}.timestamp")),
])
def test_bucket_keys_follow_scg_with_prefix(route_id: str, key: str, prefix: str, expected: tuple[str, str]) -> None:
    assert bucket_keys(route_id, key, key_prefix=prefix) == expected


@pytest.mark.parametrize(("limit", "now_s", "expected"), [
    (RateLimit(10, 20), 1700000000, (10, 20, 1700000000, 1)),
    (RateLimit(1, 60, requested_tokens=60), 5, (1, 60, 5, 60)),
    (RateLimit(1, 0), 0, (1, 0, 0, 1)),
])
def test_script_args_are_rate_capacity_now_requested(limit: RateLimit, now_s: int,
                                                     expected: tuple[int, int, int, int]) -> None:
    assert script_args(limit, now_s) == expected


@pytest.mark.parametrize(("limit", "field"), [
    (RateLimit(0, 1), "replenishRate"),
    (RateLimit(1, -1), "burstCapacity"),
    (RateLimit(1, 1, requested_tokens=0), "requestedTokens"),
])
def test_check_limit_rejects_what_the_bucket_cannot_run(limit: RateLimit, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        check_limit(limit)


def test_rate_limit_headers_are_scgs() -> None:
    assert rate_limit_headers(RateLimit(5, 10, requested_tokens=2), 4) == (
        ("X-RateLimit-Remaining", "4"),
        ("X-RateLimit-Replenish-Rate", "5"),
        ("X-RateLimit-Burst-Capacity", "10"),
        ("X-RateLimit-Requested-Tokens", "2"),
    )


@pytest.mark.parametrize(("allowed", "tokens_left", "status"), [(True, 3, 200), (False, 0, 429)])
def test_decide_passes_or_answers_429_with_headers(allowed: bool, tokens_left: int, status: int) -> None:
    limit = RateLimit(1, 5)
    decision = decide(limit, allowed, tokens_left)
    assert decision == RateDecision(allowed, status, rate_limit_headers(limit, tokens_left))


@pytest.mark.parametrize(("deny_empty_key", "expected"), [
    (True, RateDecision(False, 403)),
    (False, RateDecision(True, 200)),
])
def test_empty_key_is_403_or_unmetered(deny_empty_key: bool, expected: RateDecision) -> None:
    assert empty_key_decision(RateLimit(1, 1, deny_empty_key=deny_empty_key)) == expected


@pytest.mark.parametrize(("fail_open", "allowed", "status"), [(True, True, 200), (False, False, 503)])
def test_unavailable_decision_by_policy(fail_open: bool, allowed: bool, status: int) -> None:
    limit = RateLimit(2, 4)
    decision = unavailable_decision(limit, fail_open=fail_open)
    assert (decision.allowed, decision.status) == (allowed, status)
    assert dict(decision.headers)["X-RateLimit-Remaining"] == "-1"


@pytest.mark.parametrize(("allowed", "status"), [(True, 429), (False, 200), (False, 99), (False, 600)])
def test_rate_decision_rejects_inconsistent_status(allowed: bool, status: int) -> None:
    with pytest.raises(ValueError):
        RateDecision(allowed, status)


@pytest.mark.parametrize(("shortcut", "req", "expected_key"), [
    # No key resolver: SCG's PrincipalNameKeyResolver; a request without a principal has the empty key (403).
    ("RequestRateLimiter=1, 2", request(remote_addr="10.9.8.7"), ""),
    ("RequestRateLimiter=1, 2", request((("Authorization", basic("erin:pw")),), remote_addr="10.9.8.7"), "erin"),
    ("RequestRateLimiter=1, 2, 1, #{@ipKeyResolver}", request(remote_addr="10.9.8.7"), "10.9.8.7"),
    ("RequestRateLimiter=1, 2, 1, header:X-User", request((("X-User", "carol"),)), "carol"),
    ("RequestRateLimiter=1, 2, 1, #{@principalNameKeyResolver}", request((("Authorization", basic("dan:x")),)),
     "dan"),
    ("RequestRateLimiter=1, 2, 1, #{@userKeyResolver}", request(), ""),
])
def test_resolve_key_from_routes_yaml_filter(shortcut: str, req: RequestView, expected_key: str) -> None:
    built = build_filter(Definition.shortcut(shortcut))
    assert isinstance(built, RequestRateLimiter)
    assert resolve_key(built.limit, req) == expected_key


def test_rate_decisions_use_the_configured_statuses() -> None:
    """SCG's `status-code` and `empty-key-status-code` replace 429 and 403."""
    limit = RateLimit(1, 1, status_code=400, empty_key_status=423)
    assert decide(limit, False, 0).status == 400
    assert empty_key_decision(limit).status == 423
