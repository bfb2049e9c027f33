"""Discovery's values and the provider interface the server reads instances through."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service: where to dial it and what discovery knows about it."""

    host: str
    port: int
    instance_id: str = ""
    weight: int = 1
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    # host:port, with brackets around an IPv6 host (the label used in metrics and logs); computed once.
    address: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("endpoint host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"endpoint port out of range: {self.port}")
        if self.weight < 0:
            raise ValueError(f"endpoint weight must be >= 0: {self.weight}")
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        object.__setattr__(self, "address", address)


Snapshot = tuple[Endpoint, ...]


class Provider(Protocol):
    """Where a service's healthy instances come from; `snapshot` never blocks and never raises."""

    async def start(self, services: frozenset[str]) -> None:
        """Begin watching `services`."""

    async def set_services(self, services: frozenset[str]) -> None:
        """Watch exactly `services` from now on (after a reload)."""

    async def stop(self) -> None:
        """Stop every watch."""

    def snapshot(self, service: str) -> Snapshot:
        """The instances of `service` known now (empty when none)."""

    @property
    def version(self) -> int:
        """Grows whenever any snapshot changes."""

    async def wait_changed(self, after_version: int) -> int:
        """Wait until `version` exceeds `after_version`; return the new version."""

    def status(self) -> Mapping[str, object]:
        """Health details: `status` is UP or DOWN, plus per-provider fields."""


class ChangeSignal:
    """A version counter that coroutines can wait on; the base of the providers' change notification."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = asyncio.Event()

    def bump(self) -> None:
        """Record a change and wake every waiter."""
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, after_version: int) -> int:
        """Wait until the version exceeds `after_version`."""
        while self.version <= after_version:
            await self._changed.wait()
        return self.version


class SnapshotTable:
    """The last known instances per service and a change signal: what every provider keeps and serves alike."""

    def __init__(self, instances: Mapping[str, Snapshot] | None = None) -> None:
        self._snapshots: dict[str, Snapshot] = dict(instances or {})
        self._signal = ChangeSignal()

    def publish(self, service: str, endpoints: Snapshot) -> bool:
        """Record the instances of `service`; wake waiters and return True when they changed."""
        if service in self._snapshots and self._snapshots[service] == endpoints:
            return False
        self._snapshots[service] = endpoints
        self._signal.bump()
        return True

    def snapshot(self, service: str) -> Snapshot:
        """The last known instances of `service`."""
        return self._snapshots.get(service, ())

    def snapshots(self) -> dict[str, Snapshot]:
        """The live table, by service: a service's tuple is replaced, never changed, when its instances change, so
        a caller holding one can tell by identity whether it still holds (the HTTP lane's C does, per upgrade)."""
        return self._snapshots

    @property
    def version(self) -> int:
        return self._signal.version

    async def wait_changed(self, after_version: int) -> int:
        """Wait until some service's instances change."""
        return await self._signal.wait_changed(after_version)
