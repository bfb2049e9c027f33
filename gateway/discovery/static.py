"""A provider with fixed instances per service (tests, and deployments without Consul)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.discovery.base import Endpoint, SnapshotTable


class StaticProvider(SnapshotTable):
    """Fixed instances per service; `set` replaces a service's list (tests use it to simulate changes)."""

    async def start(self, services: frozenset[str]) -> None:
        """Nothing to watch."""

    async def set_services(self, services: frozenset[str]) -> None:
        """Nothing to watch."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def set(self, service: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Replace the instances of `service`."""
        self._snapshots[service] = endpoints
        self._signal.bump()

    def status(self) -> Mapping[str, object]:
        """Always UP."""
        return {"status": "UP", "provider": "static", "services": {k: len(v) for k, v in self._snapshots.items()}}
