"""The Consul provider: one blocking-query watch per service, keeping the last known instances on errors.

Each watch asks `/v1/health/service/<name>?index=<last>&wait=30s`, which Consul answers as soon as anything
changes, so changes apply well within a second. Errors back off exponentially with full jitter (capped) and the
previous instances stay in use. JSON handling is in `consul_build` (pure). Each watch is a duty of the gateway's
`TaskSupervisor`: should it fail outside its own error handling, it is logged, restarted with backoff and reported
DOWN in `/actuator/health` until it has processed an answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import warnings
from collections.abc import Mapping
from typing import Any

from gateway.discovery.base import SnapshotTable
from gateway.discovery.consul_build import build_endpoints
from gateway.ops.taskhealth import backoff_s
from gateway.ops.tasks import TaskSupervisor

log = logging.getLogger("gateway.discovery.consul")

WAIT = "30s"
WAIT_S = 30.0
FIRST_RESULTS_TIMEOUT_S = 3.0


class ConsulProvider(SnapshotTable):
    """Healthy instances of watched services, from a Consul agent (py-consul's `consul.aio`)."""

    def __init__(self, *, host: str, port: int, scheme: str = "http", token: str | None = None,
                 passing_only: bool = True, datacenter: str | None = None, verify: bool | str = True,
                 tasks: TaskSupervisor | None = None) -> None:
        super().__init__()
        self._supervisor = tasks or TaskSupervisor()
        self._params: dict[str, Any] = {"host": host, "port": port, "scheme": scheme, "token": token,
                                        "dc": datacenter, "verify": verify}
        self._passing_only = passing_only
        self._client: Any = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._first: dict[str, asyncio.Event] = {}
        self._errors: dict[str, str] = {}
        self._last_ok: dict[str, float] = {}
        self._rng = random.Random()

    @property
    def address(self) -> str:
        return f"{self._params['scheme']}://{self._params['host']}:{self._params['port']}"

    async def start(self, services: frozenset[str]) -> None:
        """Create the client and watch `services`, waiting briefly for their first answers."""
        import consul.aio

        with warnings.catch_warnings():
            # py-consul builds its aiohttp connector with arguments aiohttp deprecated; not ours to fix.
            warnings.simplefilter("ignore", DeprecationWarning)
            self._client = consul.aio.Consul(**self._params)
        await self.set_services(services)
        firsts = [asyncio.ensure_future(self._first[name].wait()) for name in services]
        if firsts:
            _, pending = await asyncio.wait(firsts, timeout=FIRST_RESULTS_TIMEOUT_S)
            for task in pending:
                task.cancel()

    async def set_services(self, services: frozenset[str]) -> None:
        """Watch exactly `services`."""
        for name in set(self._tasks) - services:
            self._tasks.pop(name)
            self._supervisor.cancel(_duty(name))
            self._snapshots.pop(name, None)
            self._errors.pop(name, None)
        for name in services - set(self._tasks):
            self._first[name] = asyncio.Event()
            self._tasks[name] = self._supervisor.spawn(_duty(name), functools.partial(self._watch, name))

    async def stop(self) -> None:
        """Cancel the watches and close the client."""
        tasks = list(self._tasks.values())
        for name in list(self._tasks):
            self._supervisor.cancel(_duty(name))
        self._tasks.clear()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _watch(self, name: str) -> None:
        index: str | None = None
        failures = 0
        while True:
            try:
                async with asyncio.timeout(WAIT_S + 10):
                    new_index, entries = await self._client.health.service(
                        name, index=index, wait=WAIT, passing=self._passing_only or None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the agent or the network: keep the last instances
                failures += 1
                # The agent may come back as a fresh one whose indexes are unrelated to ours: blocking on our old
                # index could wait out a whole `wait` before seeing its state, so read afresh after an error.
                index = None
                self._errors[name] = f"{type(exc).__name__}: {exc}"
                delay = backoff_s(failures, rng=self._rng)
                log.warning("consul watch of %s failed (%s); retry in %.2fs", name, self._errors[name], delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._errors.pop(name, None)
            self._last_ok[name] = time.monotonic()
            # An index that goes backwards means the agent's state was reset: start over (Consul's advice).
            if index is not None and new_index is not None and _as_int(new_index) < _as_int(index):
                new_index = None
            index = new_index
            snapshot = build_endpoints(entries, passing_only=self._passing_only)
            if self.publish(name, snapshot):
                log.info("service %s: %d instance(s)", name, len(snapshot))
            self._first[name].set()
            self._supervisor.ok(_duty(name))

    def status(self) -> Mapping[str, object]:
        """DOWN while any watch is failing (the last known instances are still used)."""
        return {
            "status": "DOWN" if self._errors else "UP",
            "provider": "consul",
            "address": self.address,
            "services": {name: len(self._snapshots.get(name, ())) for name in sorted(self._tasks)},
            **({"errors": dict(self._errors)} if self._errors else {}),
        }


def _duty(service: str) -> str:
    """The supervised duty watching `service`."""
    return f"discovery:{service}"


def _as_int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
