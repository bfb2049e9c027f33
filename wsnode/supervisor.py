"""One supervisor for every long-lived task of a node (pub/sub reader, session refresh, push stream, Consul).

A task that raises (or returns, which a long-lived loop never should) is logged with its traceback, reported DOWN
to /health, and started again after a backoff that doubles up to a bound; it counts as UP again once restarted.
Without this, an exception nobody expected ends the task silently and /health stays UP while the node no longer
does that part of its work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from wsnode import metrics

log = logging.getLogger("wsnode.supervisor")

TaskFactory = Callable[[], Awaitable[None]]


class Supervisor:
    """Runs named tasks, restarts the ones that fail, and says which are down."""

    def __init__(self, *, backoff_initial_s: float = 0.2, backoff_max_s: float = 5.0,
                 stable_after_s: float = 10.0) -> None:
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._stable_after_s = stable_after_s  # a run this long resets the backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: dict[str, str] = {}

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run `factory()` as the task `name` until stop(), restarting it whenever it ends."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} already runs")
        self._tasks[name] = asyncio.get_running_loop().create_task(self._keep(name, factory), name=name)

    @property
    def down(self) -> dict[str, str]:
        """Tasks that are down now, with the error that ended them."""
        return dict(self._down)

    def status(self) -> dict[str, str]:
        """"UP" or "DOWN" per task."""
        return {name: "DOWN" if name in self._down else "UP" for name in sorted(self._tasks)}

    async def _keep(self, name: str, factory: TaskFactory) -> None:
        delay = self._backoff_initial_s
        while True:
            started = time.monotonic()
            try:
                await factory()
                reason = "ended"
                log.error("task %s ended; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:200]
                log.exception("task %s failed; restarting it in %.1fs", name, delay)
            metrics.TASK_FAILURES.labels(name).inc()
            self._down[name] = reason
            if time.monotonic() - started >= self._stable_after_s:
                delay = self._backoff_initial_s
            try:
                await asyncio.sleep(delay)
            finally:
                self._down.pop(name, None)
            delay = min(delay * 2, self._backoff_max_s)

    async def cancel(self, name: str) -> None:
        """Stop the task `name` for good (no restart); nothing when it does not run."""
        task = self._tasks.pop(name, None)
        self._down.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self) -> None:
        """Cancel every task and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
