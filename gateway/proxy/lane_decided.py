"""What a decision of the native HTTP lane carries (`gateway.proxy.native_http`): the token `decide` hands the lane,
which the access log, the counters and a hand-back read, and whether a routing table allows such decisions to be
kept for the next request with the same head."""

from __future__ import annotations

from gateway.config.model import RouteSpec
from gateway.discovery.base import Endpoint
from gateway.model import ForwardPlan, RequestView
from gateway.ops.metrics import SeriesKey
from gateway.proxy.httpparse import RequestHead, parse_request_head
from gateway.routing.predicates import TimePredicate, WeightPredicate
from gateway.routing.table import RouteMatch, RouteTable
from gateway.routing.targets import RouteTarget


class Decided:
    """What the access log, the counters and a hand-back need of a request the lane carries. One serves every
    request with the same head from the same address while the configuration stays (see `decide`); one derived
    from a `Shape` serves its own request, and parses its head only if a log line or a hand-back asks for it."""

    __slots__ = ("_head", "_plan", "_view", "bytes_key", "endpoint", "match", "raw", "remote", "route", "scheme",
                 "target")

    def __init__(self, raw: bytes, remote: str, scheme: str, match: RouteMatch, endpoint: Endpoint,
                 target: RouteTarget, bytes_key: SeriesKey, *, head: RequestHead | None = None,
                 view: RequestView | None = None, plan: ForwardPlan | None = None) -> None:
        self.raw = raw
        self.remote = remote
        self.scheme = scheme
        self.match = match
        self.route: RouteSpec = match.route
        self.endpoint = endpoint
        self.target = target
        self.bytes_key = bytes_key  # the series of wsgate_http_bytes_total for this route
        self._head = head
        self._view = view
        self._plan = plan

    @property
    def head(self) -> RequestHead:
        if self._head is None:
            self._head = parse_request_head(self.raw)
        return self._head

    @property
    def view(self) -> RequestView:
        if self._view is None:
            head = self.head
            path, _, query = head.target.partition("?")
            self._view = RequestView(head.method, path, query, head.headers, self.remote, self.scheme)
        return self._view

    @property
    def plan(self) -> ForwardPlan:
        if self._plan is None:
            self._plan = self.match.plan(self.view)
        return self._plan


def deterministic(table: RouteTable) -> bool:
    """Whether every route's predicates decide by the request head and the client's address alone (no time or
    weight predicate): then the same head from the same address is routed and filtered the same way again."""
    return not any(isinstance(p, (TimePredicate, WeightPredicate)) for route in table.routes for p in route.predicates)
