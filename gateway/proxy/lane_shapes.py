"""The native lane's decision for a path it has not seen, derived from one made for another path; pure.

`native_http.NativeHttp.decide` caches decisions per whole request head. REST traffic, where nearly every path is
its own (`/api/orders/17`, `/api/orders/18`), misses that cache and pays the whole Python decision each time:
head parse, route match, filters and the instance's head, about 190k instructions against 20k for everything else
the lane does for a request (`python -m bench.callgrind --native-http --unique`).

For many routes the path changes the decision in one known way only. A decision made for `L/rest0` then serves
`L/rest` for any plain `rest`, as long as everything else in the head is the same (method, query, version, headers,
client address). This holds when:
- the route is the first match for every path under `L/`. `L` is a pattern's literal segments before a final `/**`
  (`/api/**` gives `/api`). Every earlier route must have a Path predicate none of whose patterns can match under
  `L/`: their literal segments differ from L's before any wildcard. The other predicates (Method, Host, Header,
  Query, Cookie, RemoteAddr) see the same inputs as for `L/rest0`, so they decide the same way;
- the filters are StripPrefix (no more parts than L has segments), PrefixPath, and request-header filters without
  URI template variables. They turn `L/rest` into `M/rest` for every such `rest`, with the same X-Forwarded-Prefix.
  RequestRateLimiter too, unless a plugin resolves its key: the client address, a header or the Basic user are the
  same for `L/rest` as for `L/rest0`, so the bucket is; the lane re-renders the refusal, whose body names the path.
- `rest` is plain: unreserved and sub-delimiter characters, no `%` or `;`, no empty, `.` or `..` segment. Anything
  else takes the whole decision, as before.

A `Shape` is built from a decision the lane really made, and it must rebuild that decision's request to the
instance byte for byte before it is kept. So if a filter's semantics change, shapes stop being made; they do not
start being wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.config.model import RouteSpec
from gateway.routing.filters import GatewayFilter
from gateway.routing.filters.headers import MapRequestHeader, PreserveHostHeader, RequestHeaderFilter
from gateway.routing.filters.path import PrefixPath, StripPrefix
from gateway.routing.filters.rate_limiter import RequestRateLimiter
from gateway.routing.predicates import (
    CloudFoundryPredicate,
    HostPredicate,
    MethodPredicate,
    PathPredicate,
    RemoteAddrPredicate,
    ValuePredicate,
    XForwardedRemoteAddrPredicate,
)

# Predicates that read the method, the headers, the query or the client address, never the path.
_PATHLESS_PREDICATES = (HostPredicate, MethodPredicate, ValuePredicate, RemoteAddrPredicate,
                        XForwardedRemoteAddrPredicate, CloudFoundryPredicate)
# A pattern segment that matches only itself: no wildcard (`*`, `?`), no variable (`{`), nothing percent-encoded.
_LITERAL_SEGMENT = re.compile(r"[A-Za-z0-9!$&'()+,=:@\-._~]+")
# A plain rest of a path: segments of unreserved and sub-delimiter characters (no '%', no ';'), none empty, '.'
# or '..', and no '..' anywhere (safe_path's slow path would look at it); an optional trailing slash. One pattern:
# under callgrind it costs about 4.7k instructions a call, separate byte searches about 12k.
_PLAIN_REST = re.compile(rb"(?!.*\.\.)(?!\.?(?:/|$))(?:[A-Za-z0-9!$&'()*+,=:@\-._~]+/(?!\.?(?:/|$)))*"
                         rb"[A-Za-z0-9!$&'()*+,=:@\-._~]+/?")


def literal_prefix(pattern: str) -> str | None:
    """`L` of a pattern `L/**` whose segments before `/**` are all literal (`/api/v1/**` -> `/api/v1`), else None."""
    if not pattern.endswith("/**"):
        return None
    prefix = pattern[:-3]
    if prefix and (not prefix.startswith("/") or not all(_LITERAL_SEGMENT.fullmatch(s) for s in prefix.split("/")[1:])):
        return None
    return prefix  # "" for `/**`


def _disjoint(pattern: str, prefix: str) -> bool:
    """Whether `pattern` provably matches no path under `prefix + '/'`: a literal segment differs from the prefix's
    at a position before the pattern's first wildcard or variable."""
    if not pattern.startswith("/"):
        return False
    for mine, theirs in zip(prefix.split("/")[1:], pattern.split("/")[1:], strict=False):
        if not _LITERAL_SEGMENT.fullmatch(theirs):
            return False
        if mine != theirs:
            return True
    return False


def _excludes(route: RouteSpec, prefix: str) -> bool:
    """Whether an earlier `route` fails for every path under `prefix + '/'` whenever it failed for one of them
    (which it did, since a later route matched): a Path predicate of it matches nothing there, or none of its
    predicates reads the path."""
    if all(isinstance(p, _PATHLESS_PREDICATES) for p in route.predicates):
        return True
    return any(isinstance(p, PathPredicate) and all(_disjoint(pp.pattern, prefix) for pp in p.patterns)
               for p in route.predicates)


def shape_prefixes(routes: Iterable[RouteSpec]) -> dict[str, tuple[str, ...]]:
    """Per route id (routes in match order), the prefixes `L` under which the route is the first match whatever
    the rest of the path (see the module's comment); routes with none are left out."""
    found: dict[str, tuple[str, ...]] = {}
    earlier: list[RouteSpec] = []
    for route in routes:
        paths = [p for p in route.predicates if isinstance(p, PathPredicate)]
        others_ok = all(isinstance(p, (PathPredicate, *_PATHLESS_PREDICATES)) for p in route.predicates)
        if len(paths) == 1 and others_ok and route.uri.forward_path is None:
            prefixes = []
            for pattern in paths[0].patterns:
                prefix = literal_prefix(pattern.pattern)
                if prefix is not None and all(_excludes(before, prefix) for before in earlier):
                    prefixes.append(prefix)
            if prefixes:
                found[route.id] = tuple(prefixes)
        earlier.append(route)
    return found


def _filters_keep_shape(chain: Iterable[GatewayFilter], prefix: str) -> bool:
    segments = len(prefix.split("/")) - 1 if prefix else 0
    for gateway_filter in chain:
        if isinstance(gateway_filter, StripPrefix):
            if gateway_filter.parts > segments:
                return False
            segments -= gateway_filter.parts
        elif isinstance(gateway_filter, PrefixPath):
            if "{" in gateway_filter.prefix:
                return False
        elif isinstance(gateway_filter, RequestHeaderFilter):
            if "{" in gateway_filter.value:
                return False
        elif isinstance(gateway_filter, RequestRateLimiter):
            if gateway_filter.limit.key.startswith("plugin:"):  # a team's key resolver may read the path
                return False
        elif not isinstance(gateway_filter, (PreserveHostHeader, MapRequestHeader)):
            return False
    return True


def split_path(raw: bytes) -> tuple[bytes, bytes] | None:
    """(the head without its request path, the path): what a Shape is looked up by and what it is applied to.

    A head whose first line is malformed gives a "path" that no shape takes (it holds a space or a CR)."""
    start = raw.find(b" ") + 1
    end = raw.find(b" ", start)
    if start <= 0 or end < 0:
        return None
    query = raw.find(b"?", start, end)
    path_end = end if query < 0 else query
    return raw[:start] + raw[path_end:], raw[start:path_end]


class Shape:
    """How a request under `prefix` is sent to the instance: `head` + `forwarded` + the rest of the path + `tail`."""

    __slots__ = ("forwarded", "head", "prefix", "tail")

    def __init__(self, prefix: bytes, head: bytes, forwarded: bytes, tail: bytes) -> None:
        self.prefix = prefix  # L + b"/"
        self.head = head  # b"GET "
        self.forwarded = forwarded  # M + b"/"
        self.tail = tail  # query, b" HTTP/1.1" and the instance's headers

    def request(self, path: bytes) -> bytes | None:
        """The request to the instance for `path`, or None when `path` is not under this shape."""
        if not path.startswith(self.prefix) or path.startswith(b"/actuator/") or path == b"/actuator":
            return None  # the gateway's own endpoints are not routed
        rest = path[len(self.prefix):]
        if _PLAIN_REST.fullmatch(rest) is None:
            return None
        return self.head + self.forwarded + rest + self.tail


def make_shape(prefixes: tuple[str, ...], chain: Iterable[GatewayFilter], method: str, path: str,
               request: bytes) -> Shape | None:
    """The Shape of a decision the lane made: `path` was routed with a match whose filters are `chain`, and
    `request` is what goes to the instance. None when the route, the filters or the path do not allow one, or when
    the shape would not rebuild `request` exactly."""
    prefix = next((p for p in prefixes if path.startswith(p + "/")), None)
    if prefix is None or not _filters_keep_shape(chain, prefix):
        return None
    rest = path[len(prefix) + 1:].encode("latin-1")
    if _PLAIN_REST.fullmatch(rest) is None:
        return None
    head = method.encode("latin-1") + b" "
    line_end = request.find(b" HTTP/1.1\r\n")
    if not request.startswith(head) or line_end < 0:
        return None
    target = request[len(head):line_end]
    query = target.find(b"?")
    forwarded_path = target if query < 0 else target[:query]
    if not forwarded_path.endswith(b"/" + rest):
        return None
    shape = Shape((prefix + "/").encode("latin-1"), head, forwarded_path[:len(forwarded_path) - len(rest)],
                  request[len(head) + len(forwarded_path):])
    return shape if shape.request(path.encode("latin-1")) == request else None


class Refusal:
    """A limited shape's refusal for any plain path: the body names the path, and Content-Length counts it. A plain
    path needs no JSON escaping, and `NativeHttp._keep_shape` checks the rebuilt refusal against a whole rendering."""

    MARK = "/_lane_refusal_path_"  # JSON leaves it as it is, and nothing else in the body contains it
    __slots__ = ("after", "before", "head_end", "head_start", "headers")

    def __init__(self, head: bytes, tail: bytes) -> None:
        headers_end = tail.index(b"\r\n\r\n") + 4
        self.headers, body = tail[:headers_end], tail[headers_end:]
        self.before, _, self.after = body.partition(self.MARK.encode("latin-1"))
        self.head_start, _, self.head_end = head.partition(b"Content-Length: %d\r\n" % len(body))

    def render(self, path: bytes) -> tuple[bytes, bytes]:
        body = self.before + path + self.after
        return self.head_start + b"Content-Length: %d\r\n" % len(body) + self.head_end, self.headers + body
