"""The live admin page under /actuator/admin: static page + a JSON document polled by the page.

`GET /actuator/admin` is the page (HTML, JS and CSS from `gateway/static/`, no token needed to load it: it holds no
data). `GET /actuator/admin/data` wants `Authorization: Bearer <wsgate.admin-token>` (401 without or with a wrong
one); when no admin token is configured it is refused with 403 unless the gateway listens on loopback addresses
only (a developer's machine). Every other /actuator path goes to the `fallback` handler (the Actuator).

The document lists routes; each service's instances with their Consul status (all of them, from a non-blocking
`/v1/health/service/<name>`, so critical ones show too), whether the balancer may pick them and their active
tunnels (the gateway's metrics summed over workers); and each instance's node figures from its own `/health` and
`/metrics`, which a wsnode serves only with a key: `wsgate.node-management-key` is sent as a bearer token (start the
nodes with the same value in `--management-key`: it reads management data and cannot push). Nodes are asked in
parallel with a short timeout; one that does not answer is shown with its error. Fetches are shared and cached for
`cache_s`, so any number of open pages costs the nodes one poll per second per worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway.config.model import ConsulSettings
from gateway.discovery.base import Provider
from gateway.ops.admin_view import (
    Instance,
    NodeReading,
    NodeSample,
    cluster_summary,
    consul_instances,
    decide_access,
    gateway_summary,
    instance_document,
    instance_tunnels,
    node_sample,
    rates_per_s,
)
from gateway.ops.metrics import Metrics
from gateway.proxy.httpparse import RequestHead
from gateway.proxy.server import AdminHandler
from gateway.routing.table import describe_routes
from gateway.routing.targets import RoutingState

log = logging.getLogger("gateway.admin")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/actuator/admin"
JSON = "application/json"
_STATIC = {  # the only files served: a fixed list, so no path from the request ever reaches the file system
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
}
Fetched = tuple[dict[str, list[Instance]], dict[str, str], dict[str, NodeReading]]


def _json(status: int, body: object) -> tuple[int, str, bytes]:
    return status, JSON, json.dumps(body).encode()


class AdminPage:
    """Answers /actuator/admin[/...] and hands every other /actuator request to `fallback`."""

    def __init__(self, *, state: Callable[[], RoutingState], provider: Provider, metrics: Metrics,
                 fallback: AdminHandler, consul: ConsulSettings | None = None,
                 listen_hosts: Callable[[], Sequence[str]] = lambda: (), upstream_ssl: ssl.SSLContext | None = None,
                 node_timeout_s: float = 0.8, cache_s: float = 1.0) -> None:
        self._state = state
        self._provider = provider
        self._metrics = metrics
        self._fallback = fallback
        self._consul = consul
        self._listen_hosts = listen_hosts
        self._ssl = upstream_ssl
        self.node_timeout_s = node_timeout_s
        self.cache_s = cache_s
        self._files: dict[str, bytes] = {}
        self._fetched: Fetched | None = None
        self._fetched_at = -1e9
        self._inflight: asyncio.Future[Fetched] | None = None
        self._samples: dict[str, NodeSample] = {}

    async def __call__(self, head: RequestHead) -> tuple[int, str, bytes]:
        """Answer one /actuator request: (status, content type, body)."""
        path = head.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return await self._fallback(head)
        if head.method not in ("GET", "HEAD"):
            return _json(405, {"status": 405, "error": "Method Not Allowed", "path": path})
        name = path[len(PREFIX):].strip("/")
        if name in ("", "index.html"):
            return 200, "text/html; charset=utf-8", self._file("admin.html")
        if name in _STATIC:
            return 200, _STATIC[name], self._file(name)
        if name == "data":
            decision = decide_access(self._state().config.server.admin_token, head.header("authorization"),
                                     listen_hosts=list(self._listen_hosts()))
            if not decision.allowed:
                return _json(decision.status, {"status": decision.status, "error": decision.reason, "path": path})
            return _json(200, await self.document())
        return _json(404, {"status": 404, "error": "Not Found", "path": path})

    def _file(self, name: str) -> bytes:
        if name not in self._files:
            self._files[name] = (STATIC_DIR / name).read_bytes()
        return self._files[name]

    async def document(self) -> dict[str, object]:
        """The admin data: routes, services with instances and node figures, gateway and cluster totals."""
        instances, errors, readings = await self._fetch()
        config = self._state().config
        totals = self._metrics.totals()
        active, upgrades = instance_tunnels(totals)
        services: list[dict[str, object]] = []
        for name in sorted(config.services):
            pool = {e.address for e in self._provider.snapshot(name)}
            services.append({
                "name": name,
                "source": "consul" if self._consul is not None else "static",
                "error": errors.get(name),
                "instances": [instance_document(i, in_pool=i.address in pool, active=active, upgrades=upgrades,
                                                reading=readings.get(i.address)) for i in instances.get(name, [])],
            })
        return {
            "generated_at_ms": int(time.time() * 1000),
            "gateway": gateway_summary(totals, self._provider.status()),
            "cluster": cluster_summary(services),
            "routes": describe_routes(config),
            "services": services,
        }

    async def _fetch(self) -> Fetched:
        """Consul's instances and the nodes' figures, fetched at most once per `cache_s` (shared by callers)."""
        if self._fetched is not None and time.monotonic() - self._fetched_at < self.cache_s:
            return self._fetched
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch_now())
            self._inflight.add_done_callback(self._fetch_done)
        return await asyncio.shield(self._inflight)

    def _fetch_done(self, future: asyncio.Future[Fetched]) -> None:
        self._inflight = None
        if not future.cancelled() and future.exception() is None:
            self._fetched = future.result()
            self._fetched_at = time.monotonic()

    async def _fetch_now(self) -> Fetched:
        services = sorted(self._state().config.services)
        timeout = aiohttp.ClientTimeout(total=self.node_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            listed = await asyncio.gather(*(self._instances(http, name) for name in services))
            instances = {name: found for name, (found, _) in zip(services, listed, strict=True)}
            errors = {name: error for name, (_, error) in zip(services, listed, strict=True) if error}
            schemes = self._schemes()
            targets = {i.address: schemes.get(name, "http") for name, found in instances.items() for i in found}
            polled = await asyncio.gather(*(self._poll_node(http, scheme, address)
                                            for address, scheme in targets.items()))
        readings = dict(zip(targets, polled, strict=True))
        for address in set(self._samples) - set(targets):
            del self._samples[address]
        return instances, errors, readings

    def _schemes(self) -> dict[str, str]:
        """https for a service that some route reaches over TLS, else http."""
        schemes: dict[str, str] = {}
        for route in self._state().config.routes:
            if route.uri.service is not None and route.uri.tls:
                schemes[route.uri.service] = "https"
        return schemes

    async def _instances(self, http: aiohttp.ClientSession, name: str) -> tuple[list[Instance], str | None]:
        """Every instance of `name` with its Consul status; discovery's snapshot when Consul is absent or fails."""
        fallback = [Instance(e.instance_id or e.address, e.host, e.port, "static" if self._consul is None
                             else "unknown", dict(e.meta).get("node_id")) for e in self._provider.snapshot(name)]
        if self._consul is None:
            return fallback, None
        consul = self._consul
        host = f"[{consul.host}]" if ":" in consul.host else consul.host
        url = f"{consul.scheme}://{host}:{consul.port}/v1/health/service/{quote(name, safe='')}"
        params = {"dc": consul.datacenter} if consul.datacenter else {}
        headers = {"X-Consul-Token": consul.token} if consul.token else {}
        try:
            async with http.get(url, params=params, headers=headers) as response:
                if response.status != 200:
                    return fallback, f"Consul answered {response.status}"
                return consul_instances(await response.json(content_type=None)), None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return fallback, f"Consul did not answer: {type(exc).__name__} {exc}".strip()

    async def _poll_node(self, http: aiohttp.ClientSession, scheme: str, address: str) -> NodeReading:
        """One node's /health and /metrics (with the node management key), as a sample with rates or an error."""
        base = f"{scheme}://{address}"
        health, metrics = await asyncio.gather(self._get(http, f"{base}/health"), self._get(http, f"{base}/metrics"),
                                               return_exceptions=True)
        if isinstance(health, BaseException) and isinstance(metrics, BaseException):
            self._samples.pop(address, None)
            return NodeReading(None, error=_describe(health))
        health_json: Any = None
        if isinstance(health, str):
            try:
                health_json = json.loads(health)
            except ValueError:
                health_json = None
        sample = node_sample(time.monotonic(), health_json, metrics if isinstance(metrics, str) else None)
        rates = rates_per_s(self._samples.get(address), sample)
        self._samples[address] = sample
        error = _describe(metrics) if isinstance(metrics, BaseException) else None
        return NodeReading(sample, rates, error)

    async def _get(self, http: aiohttp.ClientSession, url: str) -> str:
        # /health answers 503 with its JSON while the node is down: any status with a body is an answer.
        context = self._ssl if url.startswith("https:") and self._ssl is not None else True
        key = self._state().config.server.node_management_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with http.get(url, ssl=context, headers=headers) as response:
            if response.status == 404:
                raise aiohttp.ClientResponseError(response.request_info, (), status=404, message="Not Found")
            return await response.text()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer (timeout)"
    if isinstance(error, aiohttp.ClientResponseError):
        return f"answered {error.status}"
    return f"no answer ({type(error).__name__}: {error})" if str(error) else f"no answer ({type(error).__name__})"
