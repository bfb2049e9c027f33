"""The supervisor of the gateway's long-running background duties (the asyncio side of `taskhealth`).

Every duty runs under it: a coroutine (`spawn`: the discovery watches, the metrics snapshot writer, the routes
file watch) or an event-loop callback (`guard`: the relay's completion reader, called when its eventfd is
readable). When one raises, the exception is logged with its traceback, the duty is DOWN in `/actuator/health`, and
it is restarted after a backoff; it is UP again once it reports a unit of work done (`ok`). A coroutine duty that
returns is restarted the same way: these never end on their own.

Test-only fault injection: when `$WSGATE_TEST_FAULT_FILE` names a file, each `ok(name)` (and each call of a
guarded callback) raises `InjectedFault` while that file has a line equal to `name`. The tests write a duty's
name there to make it fail, and remove it to let it recover. Nothing reads the file when the variable is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from gateway.config import environment
from gateway.ops.taskhealth import TaskBoard

log = logging.getLogger("gateway.tasks")

FAULT_FILE_ENV = environment.FAULT_FILE


class InjectedFault(RuntimeError):
    """Raised at a duty's `ok` while the test fault file names it."""


class TaskSupervisor:
    """Runs duties, restarts failed ones with backoff, and answers their health."""

    def __init__(self, *, board: TaskBoard | None = None, fault_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.board = board or TaskBoard()
        self._clock = clock
        self._fault_file = Path(fault_file) if fault_file else None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def ok(self, name: str) -> None:
        """`name` did a unit of work (UP again if it had failed); raises an injected fault in tests."""
        self._inject(name)
        if self.board.failing(name):
            self.board.progressed(name, self._clock())

    def _inject(self, name: str) -> None:
        if self._fault_file is None:
            return
        try:
            named = name in self._fault_file.read_text().splitlines()
        except OSError:
            return
        if named:
            raise InjectedFault(f"fault injected into {name} ({FAULT_FILE_ENV})")

    def _failed(self, name: str, exc: BaseException | None) -> float:
        error = "ended" if exc is None else f"{type(exc).__name__}: {exc}"
        delay = self.board.failed(name, error, self._clock())
        log.error("background task %s failed (%s); restarting it in %.2fs", name, error, delay,
                  exc_info=exc if exc is not None and not isinstance(exc, InjectedFault) else None)
        return delay

    def spawn(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run `run()` as the duty `name` until `cancel(name)` or `stop()`, restarting it whenever it ends."""
        self.cancel(name)
        task = asyncio.get_running_loop().create_task(self._keep(name, run), name=name)
        self._tasks[name] = task
        return task

    async def _keep(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        while True:
            self.board.started(name, self._clock())
            failure: BaseException | None = None
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: the duty must come back
                failure = exc
            await asyncio.sleep(self._failed(name, failure))

    def guard(self, name: str, callback: Callable[[], None], *, detach: Callable[[], object],
              attach: Callable[[Callable[[], None]], object], loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """`callback` as the duty `name`, for an event loop to call (a reader).

        When it raises, `detach()` stops the loop calling it; after the backoff `attach(guarded)` gives the loop the
        guarded callback again, and it is called once at once (to take what came meanwhile).
        """

        # A guarded reader runs per event (the relay's, per handshake): no call for the fault file when there is
        # none, and the board is asked whether the duty is failing only after it was seen failing.
        failed = self.board.failing(name)

        def guarded() -> None:
            nonlocal failed
            try:
                if self._fault_file is not None:
                    self._inject(name)
                callback()
            except Exception as exc:  # the reader must come back
                failed = True
                detach()
                delay = self._failed(name, exc)
                self._timers[name] = loop.call_later(delay, restart)
                return
            if failed:
                failed = False
                if self.board.failing(name):
                    self.board.progressed(name, self._clock())

        def restart() -> None:
            self._timers.pop(name, None)
            self.board.started(name, self._clock())
            attach(guarded)
            guarded()

        self.board.started(name, self._clock())
        return guarded

    def cancel(self, name: str) -> None:
        """Stop the duty `name` on purpose; it is no longer reported."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self.board.removed(name)

    async def stop(self) -> None:
        """Cancel every duty and wait for the coroutines to end."""
        tasks = list(self._tasks.values())
        for name in list(self._tasks) + list(self._timers):
            self.cancel(name)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def status(self) -> Mapping[str, object]:
        """Health details of every duty (`TaskBoard.status`)."""
        return self.board.status(self._clock())
