"""Consul self-registration (consul.aio): register with an HTTP check on /health, keep it registered, deregister
first on drain."""

from __future__ import annotations

import asyncio
import logging
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wsnode.settings import consul_check_timeout_s

log = logging.getLogger("wsnode.registration")


@dataclass(frozen=True, slots=True)
class ConsulTarget:
    """Where the agent answers."""

    host: str
    port: int
    scheme: str = "http"


def parse_consul_addr(addr: str) -> ConsulTarget:
    """`host:port` or a URL (as CONSUL_HTTP_ADDR allows); ValueError when it is neither."""
    text = addr.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"bad Consul address {addr!r}: expected host:port or http(s)://host:port")
    port = parts.port or (443 if parts.scheme == "https" else 8500)
    return ConsulTarget(host=parts.hostname, port=port, scheme=parts.scheme)


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s" if seconds >= 1 else f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """The registration of one node."""

    name: str
    service_id: str
    address: str
    port: int
    node_id: str
    tags: tuple[str, ...]
    check_interval_s: float
    deregister_after_s: float
    management_port: int | None = None  # announced in the service's meta, for admin tools on the private network

    def meta(self) -> dict[str, str]:
        """The service's Consul meta."""
        meta = {"node_id": self.node_id}
        if self.management_port is not None:
            meta["management_port"] = str(self.management_port)
        return meta

    def check(self) -> dict[str, Any]:
        """The HTTP check on /health, in the agent API's JSON."""
        scheme_host = f"[{self.address}]" if ":" in self.address else self.address
        return {"HTTP": f"http://{scheme_host}:{self.port}/health", "Interval": _duration(self.check_interval_s),
                "Timeout": _duration(consul_check_timeout_s(self.check_interval_s)),
                "DeregisterCriticalServiceAfter": _duration(self.deregister_after_s)}


class ConsulRegistration:
    """Registers the node, re-registers when the agent lost it, deregisters on drain."""

    def __init__(self, target: ConsulTarget, spec: ServiceSpec, *, token: str | None = None) -> None:
        import consul.aio

        self.spec = spec
        with warnings.catch_warnings():
            # py-consul builds its aiohttp connector with arguments aiohttp deprecated; not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._client: Any = consul.aio.Consul(host=target.host, port=target.port, scheme=target.scheme,
                                                        token=token or None)
        self.registered = False

    async def register(self) -> None:
        """Register (or replace) this node's service with its check."""
        spec = self.spec
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            await self._client.agent.service.register(
                spec.name, service_id=spec.service_id, address=spec.address, port=spec.port, tags=list(spec.tags),
                meta=spec.meta(), check=spec.check())
        self.registered = True
        log.info("registered %s in consul as %s", spec.name, spec.service_id)

    async def keep_registered(self, every_s: float = 2.0) -> None:
        """Re-register whenever the agent no longer knows the service (agent restart); runs until cancelled."""
        while True:
            try:
                if not self.registered:
                    await self.register()
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        services = await self._client.agent.services()
                    if self.spec.service_id not in services:
                        log.warning("consul lost service %s; registering again", self.spec.service_id)
                        await self.register()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the agent may be down or answer garbage; retry, never crash the node
                log.warning("consul registration: %s", exc)
                self.registered = False
            await asyncio.sleep(every_s)

    async def deregister(self) -> None:
        """Remove the service (first step of a drain)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                await self._client.agent.service.deregister(self.spec.service_id)
            log.info("deregistered %s from consul", self.spec.service_id)
        except Exception as exc:  # draining continues whatever the agent says
            log.warning("consul deregistration failed: %s", exc)
        self.registered = False

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.close()
