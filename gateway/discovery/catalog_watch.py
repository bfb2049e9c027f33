"""Consul's service catalog for `discovery.locator`: which services exist, followed with blocking queries.

`/v1/catalog/services?index=N&wait=30s` answers as soon as a service is registered or deregistered; each answer
becomes a `{name: ServiceInfo}` snapshot (metadata of the service's first instance, for `include-expression`).
Errors back off like the health watches, keeping the last snapshot. Route building is pure (gateway.config.locator).
"""

from __future__ import annotations

import asyncio
import logging
import random
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.config.locator import ServiceInfo
from gateway.config.model import ConsulSettings
from gateway.discovery.consul import WAIT, WAIT_S
from gateway.ops.taskhealth import backoff_s

log = logging.getLogger("gateway.discovery.catalog")

Services = Mapping[str, ServiceInfo]


class CatalogWatch:
    """Calls `on_change` with every new set of catalog services until cancelled."""

    def __init__(self, settings: ConsulSettings, on_change: Callable[[Services], Awaitable[None]], *,
                 with_metadata: bool = True) -> None:
        self._settings = settings
        self._on_change = on_change
        self._with_metadata = with_metadata
        self._rng = random.Random()

    async def run(self) -> None:
        """The watch loop (run it as a task; cancel it to stop)."""
        import consul.aio

        s = self._settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # py-consul's aiohttp connector arguments
            client = consul.aio.Consul(host=s.host, port=s.port, scheme=s.scheme, token=s.token, dc=s.datacenter)
        index: str | None = None
        failures = 0
        last: dict[str, ServiceInfo] | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(WAIT_S + 10):
                        new_index, names = await client.catalog.services(index=index, wait=WAIT)
                        services = {name: await self._info(client, name) for name in sorted(names or {})}
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the agent or the network: keep the routes we have, retry
                    failures += 1
                    index = None
                    delay = backoff_s(failures, rng=self._rng)
                    log.warning("consul catalog watch failed (%s: %s); retry in %.2fs", type(exc).__name__, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                index = new_index
                if services != last:
                    last = services
                    await self._on_change(services)
        finally:
            await client.close()

    async def _info(self, client: Any, name: str) -> ServiceInfo:
        if not self._with_metadata:
            return ServiceInfo(name)
        _, entries = await client.catalog.service(name)
        metas = tuple(tuple(sorted((str(k), str(v)) for k, v in (entry.get("ServiceMeta") or {}).items()))
                      for entry in entries or ())
        return ServiceInfo(name, metas[0] if metas else (), metas)
