"""Fixtures for the dev agent's tests: unique service names, a flippable HTTP health backend, real-Consul skips."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from harness import free_port

EXTERNAL_CONSUL = bool(os.environ.get("CONSUL_HTTP_ADDR"))
dev_only = pytest.mark.skipif(
    EXTERNAL_CONSUL, reason="relies on timings below real Consul's minimums (DeregisterCriticalServiceAfter >= 1m)")


@pytest.fixture
def service_name() -> str:
    """A service name no other test (or earlier run against a shared Consul) uses."""
    return f"devconsul-test-{uuid.uuid4().hex[:10]}"


@dataclass
class HealthBackend:
    """A small HTTP server whose /health answers `status`; it records each probe's method and headers."""

    url: str
    status: int = 200
    hits: int = 0
    probes: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
async def health_backend() -> AsyncIterator[HealthBackend]:
    """Serve /health on a free loopback port with a status the test can flip."""
    port = free_port()
    backend = HealthBackend(url=f"http://127.0.0.1:{port}/health")

    async def health(request: web.Request) -> web.Response:
        backend.hits += 1
        backend.probes.append((request.method, dict(request.headers)))
        return web.Response(status=backend.status, text=f"status {backend.status}")

    app = web.Application()
    app.router.add_route("*", "/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield backend
    await runner.cleanup()


Entries = list[dict[str, Any]]


async def wait_health(client: Any, name: str, predicate: Callable[[Entries], bool], *, timeout_s: float = 8.0,
                      **query: Any) -> Entries:
    """Follow /v1/health/service/<name> with blocking queries until `predicate(entries)` holds (no sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    index = None
    entries: Entries = []
    while loop.time() < deadline:
        remaining = max(deadline - loop.time(), 0.1)
        index, entries = await client.health.service(name, index=index, wait=f"{min(remaining, 2.0):.3f}s", **query)
        if predicate(entries):
            return entries
    raise AssertionError(f"health of {name} never matched; last entries: {entries}")


def statuses(entries: Entries) -> dict[str, dict[str, str]]:
    """{service_id: {check_id: status}} of health entries."""
    return {e["Service"]["ID"]: {c["CheckID"]: c["Status"] for c in e["Checks"]} for e in entries}


def check_status(entries: Entries, service_id: str, check_id: str) -> str | None:
    """The status of one check in health entries, None while the instance or check is not (yet) there."""
    return statuses(entries).get(service_id, {}).get(check_id)
