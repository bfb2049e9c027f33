"""The agent's check runner: HTTP probes at their interval, plus the timer that expires TTLs and reaps services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

import aiohttp

from devconsul.catalog import TOPIC_CHECKS, Catalog, Changes
from devconsul.definitions import CRITICAL, PASSING, WARNING, CheckDefinition
from devconsul.durations import NS_PER_S

log = logging.getLogger(__name__)
DEFAULT_HTTP_TIMEOUT_NS = 10 * NS_PER_S  # Consul's default for HTTP checks
OUTPUT_MAX_BYTES = 4096  # Consul keeps at most this much of a response body as the check output


def status_for_http(code: int) -> str:
    """Consul's mapping of an HTTP check's response code: 2xx passing, 429 warning, anything else critical."""
    if 200 <= code < 300:
        return PASSING
    return WARNING if code == 429 else CRITICAL


async def probe_http(session: aiohttp.ClientSession, definition: CheckDefinition) -> tuple[str, str]:
    """Run one HTTP check; returns (status, output) worded like Consul's."""
    method = (definition.method or "GET").upper()
    url = definition.http
    headers: list[tuple[str, str]] = [(k, v) for k, values in definition.header for v in values]
    names = {k.lower() for k, _ in headers}
    if "user-agent" not in names:
        headers.append(("User-Agent", "Consul Health Check"))
    if "accept" not in names:
        headers.append(("Accept", "text/plain, text/*, */*"))
    timeout_s = (definition.timeout_ns or DEFAULT_HTTP_TIMEOUT_NS) / NS_PER_S
    op = method[:1] + method[1:].lower()  # Go's url.Error names the method like this: Get "http://..."
    try:
        async with session.request(method, url, headers=headers, data=definition.body.encode() or None,
                                   timeout=aiohttp.ClientTimeout(total=timeout_s),
                                   ssl=not definition.tls_skip_verify) as response:
            text = (await response.content.read(OUTPUT_MAX_BYTES)).decode(errors="replace")
            return (status_for_http(response.status),
                    f"HTTP {method} {url}: {response.status} {response.reason or ''} Output: {text}")
    except TimeoutError:
        return CRITICAL, f'{op} "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)'
    except aiohttp.ClientConnectorError as exc:
        reason = os.strerror(exc.os_error.errno).lower() if exc.os_error.errno else str(exc.os_error)
        return CRITICAL, f'{op} "{url}": dial tcp {exc.host}:{exc.port}: connect: {reason}'
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return CRITICAL, f'{op} "{url}": {exc or type(exc).__name__}'


class CheckRunner:
    """Keeps one probe task per HTTP check of the catalog and one timer task for TTL expiry and reaping."""

    def __init__(self, catalog: Catalog, commit: Callable[[Changes], None], *,
                 clock: Callable[[], float] = time.monotonic, min_timer_s: float = 0.005) -> None:
        self.catalog = catalog
        self._commit = commit
        self._clock = clock
        self._min_timer_s = min_timer_s
        self._probes: dict[str, tuple[CheckDefinition, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the probe session and start the timer."""
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self._timer = asyncio.create_task(self._run_timer(), name="devconsul-timer")
        self.sync()

    async def close(self) -> None:
        """Stop every task and close the session."""
        tasks = [task for _, task in self._probes.values()]
        if self._timer is not None:
            tasks.append(self._timer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._probes.clear()
        if self._session is not None:
            await self._session.close()

    def on_changes(self, changes: Changes) -> None:
        """React to a catalog mutation: new or removed checks change the probe set and the timer's deadline."""
        if TOPIC_CHECKS in changes.topics:
            self.sync()

    def sync(self) -> None:
        """Start probes for new or redefined HTTP checks, stop those of removed ones, and re-arm the timer."""
        wanted = {c.check_id: c.definition for c in self.catalog.local_checks()
                  if c.kind == "http" and c.definition is not None}
        for check_id, (definition, task) in list(self._probes.items()):
            if wanted.get(check_id) != definition:
                task.cancel()
                del self._probes[check_id]
        if self._session is not None:
            for check_id, definition in wanted.items():
                if check_id not in self._probes and definition is not None:
                    task = asyncio.create_task(self._run_probe(check_id, definition), name=f"check {check_id}")
                    self._probes[check_id] = (definition, task)
        self._wake.set()

    async def _run_probe(self, check_id: str, definition: CheckDefinition) -> None:
        assert self._session is not None
        interval_s = definition.interval_ns / NS_PER_S
        while True:
            status, output = await probe_http(self._session, definition)
            changes = self.catalog.record_http_result(check_id, definition, status, output, now_s=self._clock())
            if changes:
                log.info("check %s is now %s: %s", check_id, status, output[:200])
            self._commit(changes)
            await asyncio.sleep(interval_s)

    async def _run_timer(self) -> None:
        while True:
            self._wake.clear()
            try:
                before = {s.definition.id for s in self.catalog.local_services()}
                self._commit(self.catalog.tick(self._clock()))
                for service_id in sorted(before - {s.definition.id for s in self.catalog.local_services()}):
                    log.info("deregistered service %s: critical past DeregisterCriticalServiceAfter", service_id)
            except Exception:  # the timer must outlive any single bad tick
                log.exception("check timer tick failed")
            deadline = self.catalog.next_deadline_s()
            timeout = None if deadline is None else max(deadline - self._clock(), self._min_timer_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
