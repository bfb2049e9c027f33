"""The exchange's outcome mapping and its fields (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from gateway.config.model import RouteSpec
from gateway.model import ForwardPlan, RequestView
from gateway.proxy.exchange import CLOSE, KEEP_ALIVE, TUNNEL, Exchange, Outcome, outcome_after, serves_next
from gateway.proxy.httpparse import parse_request_head

if TYPE_CHECKING:
    from gateway.proxy.client_conn import ClientConn


@pytest.mark.parametrize(("keep_alive", "expected"), [(True, Outcome.KEEP_ALIVE), (False, Outcome.CLOSE)])
def test_outcome_after_an_answer(keep_alive: bool, expected: Outcome) -> None:
    assert outcome_after(keep_alive) is expected


def test_the_module_constants_are_the_members() -> None:
    assert (KEEP_ALIVE, CLOSE, TUNNEL) == (Outcome.KEEP_ALIVE, Outcome.CLOSE, Outcome.TUNNEL)
    assert len(Outcome) == 3


@pytest.mark.parametrize(("outcome", "draining", "expected"), [
    (Outcome.KEEP_ALIVE, False, True),
    (Outcome.KEEP_ALIVE, True, False),  # a draining worker answers the request it has, then closes
    (Outcome.CLOSE, False, False),
    (Outcome.CLOSE, True, False),
    (Outcome.TUNNEL, False, False),  # the connection is the tunnel's now
    (Outcome.TUNNEL, True, False),
])
def test_outcome_serves_next(outcome: Outcome, draining: bool, expected: bool) -> None:
    assert serves_next(outcome, draining) is expected


def test_exchange_defaults() -> None:
    head = parse_request_head(b"GET /a?b=1 HTTP/1.1\r\nHost: a")
    view = RequestView(head.method, "/a", "b=1", head.headers, "192.0.2.7", "https")
    ex = Exchange(cast("ClientConn", None), head, view, cast(RouteSpec, None), ForwardPlan("/a", "b=1", head.headers),
                  started=1.5, upgrade=False)
    assert (ex.started, ex.upgrade, ex.hops, ex.extra_headers, ex.response_timeout_s) == (1.5, False, 0, (), None)
