"""Load balancing: the order in which a request tries a service's instances (pure; no I/O).

`Balancer.order` returns every endpoint, best first: the server dials them in that order and moves on when a
connect is refused or times out. Hashing uses rendezvous (highest random weight) hashing, so a key keeps its
instance while others come and go, and its failover order is stable too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl

from gateway.discovery.base import Endpoint
from gateway.model import BalancerChoice, Balancing, RequestView

# Read once: on Python 3.11 `Balancing.X` goes through `EnumType.__getattr__`'s hook, ten times a global's cost,
# and `order` runs per request and per upgrade.
_RANDOM, _HASH, _LEAST_CONNECTIONS = Balancing.RANDOM, Balancing.HASH, Balancing.LEAST_CONNECTIONS


def hash_key(hash_on: str | None, request: RequestView) -> str | None:
    """What `hash_on` (`header:NAME`, `cookie:NAME`, `query:NAME` or `client`) picks out of `request`."""
    if not hash_on or hash_on == "client":
        return request.remote_addr
    kind, _, name = hash_on.partition(":")
    if kind == "header":
        return request.header(name)
    if kind == "cookie":
        for raw in (value for key, value in request.headers if key.lower() == "cookie"):
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(raw)
            except CookieError:
                continue
            if name in cookie:
                return cookie[name].value
        return None
    if kind == "query":
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            if key == name:
                return value
        return None
    return None


def _score(key: str, endpoint: Endpoint) -> int:
    digest = hashlib.blake2b(f"{key}\x00{endpoint.address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Balancer:
    """Orders instances per request and counts active connections per endpoint (for least-connections)."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._next: dict[str, int] = {}
        self._active: dict[str, int] = {}

    def active(self, endpoint: Endpoint) -> int:
        """Connections currently held to `endpoint`."""
        return self._active.get(endpoint.address, 0)

    def active_by_address(self) -> dict[str, int]:
        """Connections currently held, per endpoint address (only those with some)."""
        return dict(self._active)

    def round_robin_counters(self) -> dict[str, int]:
        """The live round-robin counters `order` keeps, by pool key: the HTTP lane's C moves them as `order` does
        (gateway/_http_upgrade.c), so both take turns from one counter."""
        return self._next

    def counts(self) -> dict[str, int]:
        """The live counts `acquire` and `release` keep, by address (absent: none), for a caller that counts per
        handshake without a call each (`gateway.tunnel.registry.Series`); it keeps their rules."""
        return self._active

    def acquire(self, endpoint: Endpoint) -> None:
        """Count one more connection to `endpoint`."""
        self._active[endpoint.address] = self._active.get(endpoint.address, 0) + 1

    def release(self, endpoint: Endpoint) -> None:
        """Count one connection to `endpoint` less."""
        left = self._active.get(endpoint.address, 0) - 1
        if left > 0:
            self._active[endpoint.address] = left
        else:
            self._active.pop(endpoint.address, None)

    def order(self, key: str, endpoints: Sequence[Endpoint], choice: BalancerChoice,
              request: RequestView) -> list[Endpoint]:
        """Every endpoint, in the order to try them; `key` names the pool (service or host:port)."""
        if not endpoints:
            return []
        algorithm = choice.algorithm
        if algorithm is _RANDOM:
            return self._rng.sample(list(endpoints), len(endpoints))
        if algorithm is _HASH:
            value = hash_key(choice.hash_on, request)
            if value is not None:
                return sorted(endpoints, key=lambda e: _score(value, e), reverse=True)
        start = self._next.get(key, 0) % len(endpoints)  # round robin (here, not in a method: it runs per upgrade)
        self._next[key] = start + 1
        rotated = [*endpoints[start:], *endpoints[:start]]
        if algorithm is _LEAST_CONNECTIONS:
            # sorted() is stable: ties keep the round-robin rotation, so equal loads still spread.
            return sorted(rotated, key=self.active)
        return rotated
