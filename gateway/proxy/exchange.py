"""One request on its way through the proxy, and how its connection goes on afterwards (pure).

An `Exchange` is made once a request is routed and planned; from there on it is the one argument that carries the
request through the server, the policies (Retry, CircuitBreaker, `forward:`) and the answer. `Outcome` says what
becomes of the client connection once the request is answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from gateway.config.model import RouteSpec
from gateway.model import ForwardPlan, Headers, RequestView
from gateway.proxy.httpparse import RequestHead

if TYPE_CHECKING:
    from gateway.proxy.client_conn import ClientConn


class Outcome(Enum):
    """What becomes of the client connection after one request."""

    KEEP_ALIVE = "keep-alive"  # read the next request
    CLOSE = "close"
    TUNNEL = "tunnel"  # the connection belongs to a tunnel now, no longer to the server


# Every request ends in one of these: a member looked up on its Enum class costs about 100 ns, a module global a
# tenth of that.
KEEP_ALIVE, CLOSE, TUNNEL = Outcome.KEEP_ALIVE, Outcome.CLOSE, Outcome.TUNNEL


def outcome_after(keep_alive: bool) -> Outcome:
    """The outcome of an answered request whose connection may (or may not) carry another."""
    return KEEP_ALIVE if keep_alive else CLOSE


def serves_next(outcome: Outcome, draining: bool) -> bool:
    """Whether the server reads another request from the connection (never while draining)."""
    return outcome is KEEP_ALIVE and not draining


@dataclass(slots=True)
class Exchange:
    """One routed request: its head, the client connection, the route and plan, and its times.

    A policy that changes the head or the route for an attempt (a kept body, `forward:`, a fallback) makes a new
    Exchange with `dataclasses.replace`; `response_timeout_s` is set by each attempt before it dials.
    """

    conn: ClientConn
    head: RequestHead
    view: RequestView
    route: RouteSpec
    plan: ForwardPlan
    started: float  # time.monotonic() when the head was taken: the access log's duration starts here
    upgrade: bool  # a WebSocket handshake (a GET asking for it) that the instance may answer with 101
    hops: int = 0  # `forward:` and fallback dispatches behind this one (MAX_FORWARD_HOPS bounds them)
    extra_headers: Headers = ()  # added to the instance's response (a rate limiter's X-RateLimit-*)
    response_timeout_s: float | None = None  # this attempt's wait for the instance's response (None: no limit)
