"""Balancer ordering: round-robin, least-connections, random, hash (header/cookie/query/client)."""

from __future__ import annotations

import random

import pytest

from gateway.discovery.base import Endpoint
from gateway.model import BalancerChoice, Balancing, RequestView
from gateway.routing.balancer import Balancer, hash_key

A, B, C = Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80)
RR = BalancerChoice()
LEAST = BalancerChoice(Balancing.LEAST_CONNECTIONS)


def view(headers: tuple[tuple[str, str], ...] = (), query: str = "", remote: str = "192.0.2.7") -> RequestView:
    return RequestView("GET", "/x", query=query, headers=headers, remote_addr=remote)


def test_round_robin_rotates_through_every_instance() -> None:
    balancer = Balancer()
    firsts = [balancer.order("svc", [A, B, C], RR, view())[0] for _ in range(6)]
    assert firsts == [A, B, C, A, B, C]


def test_round_robin_order_contains_every_instance_for_failover() -> None:
    balancer = Balancer()
    balancer.order("svc", [A, B, C], RR, view())
    assert balancer.order("svc", [A, B, C], RR, view()) == [B, C, A]


def test_round_robin_keeps_separate_positions_per_pool() -> None:
    balancer = Balancer()
    balancer.order("one", [A, B], RR, view())
    assert balancer.order("two", [A, B], RR, view())[0] == A


def test_order_of_no_instances_is_empty() -> None:
    assert Balancer().order("svc", [], RR, view()) == []


def test_least_connections_prefers_fewest_active() -> None:
    balancer = Balancer()
    balancer.acquire(A)
    balancer.acquire(A)
    balancer.acquire(B)
    assert balancer.order("svc", [A, B, C], LEAST, view()) == [C, B, A]
    balancer.release(A)
    balancer.release(A)
    assert balancer.active(A) == 0
    assert balancer.order("svc", [A, B, C], LEAST, view())[-1] == B


def test_least_connections_spreads_ties_round_robin() -> None:
    balancer = Balancer()
    firsts = {balancer.order("svc", [A, B, C], LEAST, view())[0] for _ in range(3)}
    assert firsts == {A, B, C}


def test_release_never_goes_negative() -> None:
    balancer = Balancer()
    balancer.release(A)
    assert balancer.active(A) == 0


def test_random_returns_a_permutation_and_varies() -> None:
    balancer = Balancer(rng=random.Random(7))
    orders = {tuple(balancer.order("svc", [A, B, C], BalancerChoice(Balancing.RANDOM), view())) for _ in range(30)}
    assert all(sorted(o, key=lambda e: e.host) == [A, B, C] for o in orders)
    assert len(orders) > 1


@pytest.mark.parametrize(("hash_on", "request_view", "expected"), [
    ("header:X-User", view(headers=(("x-user", "alice"),)), "alice"),
    ("header:X-User", view(), None),
    ("cookie:sid", view(headers=(("Cookie", "a=1; sid=s42"),)), "s42"),
    ("cookie:sid", view(headers=(("Cookie", "a=1"),)), None),
    ("query:room", view(query="x=1&room=r9"), "r9"),
    ("query:room", view(query="x=1"), None),
    ("client", view(remote="203.0.113.5"), "203.0.113.5"),
    (None, view(remote="203.0.113.5"), "203.0.113.5"),
    ("bogus:thing", view(), None),
])
def test_hash_key_picks_the_configured_value(hash_on: str | None, request_view: RequestView,
                                             expected: str | None) -> None:
    assert hash_key(hash_on, request_view) == expected


@pytest.mark.parametrize("hash_on", ["header:X-User", "cookie:sid", "query:room", "client"])
def test_hash_is_sticky_for_the_same_key(hash_on: str) -> None:
    balancer = Balancer()
    choice = BalancerChoice(Balancing.HASH, hash_on)
    request = view(headers=(("X-User", "bob"), ("Cookie", "sid=xyz")), query="room=7")
    orders = {tuple(balancer.order("svc", [A, B, C], choice, request)) for _ in range(5)}
    assert len(orders) == 1


def test_hash_keeps_key_on_its_instance_when_another_leaves() -> None:
    balancer = Balancer()
    choice = BalancerChoice(Balancing.HASH, "header:X-User")
    moved = 0
    for user in range(200):
        request = view(headers=(("X-User", f"user{user}"),))
        first = balancer.order("svc", [A, B, C], choice, request)[0]
        if first is C:
            continue
        if balancer.order("svc", [A, B], choice, request)[0] != first:
            moved += 1
    assert moved == 0


def test_hash_spreads_keys_over_instances() -> None:
    balancer = Balancer()
    choice = BalancerChoice(Balancing.HASH, "header:X-User")
    firsts = {balancer.order("svc", [A, B, C], choice, view(headers=(("X-User", f"u{i}"),)))[0] for i in range(60)}
    assert firsts == {A, B, C}


def test_hash_without_key_falls_back_to_round_robin() -> None:
    balancer = Balancer()
    choice = BalancerChoice(Balancing.HASH, "header:X-User")
    firsts = [balancer.order("svc", [A, B], choice, view())[0] for _ in range(2)]
    assert firsts == [A, B]
