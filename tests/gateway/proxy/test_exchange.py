"""The exchange's outcome mapping and derived fields (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest

from gateway.config.model import RouteSpec
from gateway.model import ForwardPlan, RequestView
from gateway.proxy.exchange import Exchange, Outcome
from gateway.proxy.httpparse import parse_request_head

if TYPE_CHECKING:
    from gateway.proxy.client_conn import ClientConn


@pytest.mark.parametrize(("keep_alive", "expected"), [(True, Outcome.KEEP_ALIVE), (False, Outcome.CLOSE)])
def test_outcome_after_an_answer(keep_alive: bool, expected: Outcome) -> None:
    assert Outcome.after(keep_alive) is expected


@pytest.mark.parametrize(("outcome", "draining", "serves_next"), [
    (Outcome.KEEP_ALIVE, False, True),
    (Outcome.KEEP_ALIVE, True, False),  # a draining worker answers the request it has, then closes
    (Outcome.CLOSE, False, False),
    (Outcome.CLOSE, True, False),
    (Outcome.TUNNEL, False, False),  # the connection is the tunnel's now
    (Outcome.TUNNEL, True, False),
])
def test_outcome_serves_next(outcome: Outcome, draining: bool, serves_next: bool) -> None:
    assert outcome.serves_next(draining=draining) is serves_next


@pytest.mark.parametrize(("raw", "upgrade"), [
    (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade", True),
    (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade", True),
    (b"POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade", False),  # only a GET upgrades
    (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade", False),  # not to WebSocket
    (b"GET /ws HTTP/1.1\r\nHost: a", False),
])
def test_exchange_upgrade_and_remote(raw: bytes, upgrade: bool) -> None:
    head = parse_request_head(raw)
    path, _, query = head.target.partition("?")
    view = RequestView(head.method, path, query, head.headers, "192.0.2.7", "https")
    ex = Exchange(cast("ClientConn", None), head, view, cast(RouteSpec, None), ForwardPlan(path, query, head.headers),
                  started=0.0)
    assert ex.upgrade is upgrade
    assert ex.remote == "192.0.2.7"
    assert (ex.hops, ex.extra_headers, ex.response_timeout_s) == (0, (), None)
