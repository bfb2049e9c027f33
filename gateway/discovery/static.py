"""A provider with fixed instances per service (tests, and deployments without Consul)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.discovery.base import ChangeSignal, Endpoint, Snapshot


class StaticProvider:
    """Fixed instances per service; `set` replaces a service's list (tests use it to simulate changes)."""

    def __init__(self, instances: Mapping[str, tuple[Endpoint, ...]] | None = None) -> None:
        self._instances: dict[str, Snapshot] = dict(instances or {})
        self._signal = ChangeSignal()

    async def start(self, services: frozenset[str]) -> None:
        """Nothing to watch."""

    async def set_services(self, services: frozenset[str]) -> None:
        """Nothing to watch."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def set(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Replace the instances of `service`."""
        self._instances[service] = endpoints
        self._signal.bump()

    def snapshot(self, service: str) -> Snapshot:
        """The instances of `service`."""
        return self._instances.get(service, ())

    @property
    def version(self) -> int:
        return self._signal.version

    async def wait_changed(self, after_version: int) -> int:
        """Wait for the next `set`."""
        return await self._signal.wait_changed(after_version)

    def status(self) -> Mapping[str, object]:
        """Always UP."""
        return {"status": "UP", "provider": "static", "services": {k: len(v) for k, v in self._instances.items()}}
