"""The health of the gateway's long-running background duties (pure): failures, restarts with backoff, UP or DOWN.

A duty (the discovery watch of a service, the metrics snapshot writer, the routes file watch, the relay's
completion reader) is DOWN from the moment it fails until it is running again and has done a unit of work
(`progressed`), or has run `stable_s` without failing. Restarts back off exponentially with full jitter, capped; the
count of consecutive failures starts over once a duty has been UP again. `tasks.TaskSupervisor` is the asyncio
side that runs duties and feeds this board; `/actuator/health` shows `TaskBoard.status`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 5.0
STABLE_S = 5.0


def backoff_s(failures: int, *, rng: random.Random) -> float:
    """Full-jitter exponential backoff after `failures` consecutive errors."""
    return rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2 ** min(failures, 16))))


@dataclass(slots=True)
class DutyRecord:
    """What the board knows of one duty."""

    failures: int = 0  # consecutive
    restarts: int = 0
    error: str | None = None
    failed_at: float | None = None
    started_at: float = 0.0
    progressed_at: float | None = None
    running: bool = False

    def up(self, now: float, stable_s: float) -> bool:
        """Never failed, or running again and past its failure (a unit of work done, or `stable_s` without one)."""
        if self.failed_at is None:
            return True
        if not self.running:
            return False
        return (self.progressed_at is not None and self.progressed_at >= self.started_at) \
            or now - self.started_at >= stable_s


class TaskBoard:
    """Every supervised duty's record; times are the caller's clock (seconds)."""

    def __init__(self, *, stable_s: float = STABLE_S, rng: random.Random | None = None) -> None:
        self._stable_s = stable_s
        self._rng = rng or random.Random()
        self._records: dict[str, DutyRecord] = {}

    def started(self, name: str, now: float) -> None:
        """`name` runs (first start or restart)."""
        record = self._records.setdefault(name, DutyRecord())
        if record.failed_at is not None:
            record.restarts += 1
        record.running = True
        record.started_at = now

    def progressed(self, name: str, now: float) -> None:
        """`name` did a unit of work: it is UP again if it had failed."""
        record = self._records.get(name)
        if record is not None and record.failed_at is not None:
            record.progressed_at = now

    def failing(self, name: str) -> bool:
        """Whether `name` has failed and not yet been seen working since (cheap: for hot paths)."""
        record = self._records.get(name)
        return record is not None and record.failed_at is not None and (
            record.progressed_at is None or record.progressed_at < record.started_at)

    def failed(self, name: str, error: str, now: float) -> float:
        """`name` failed with `error`; returns how long to wait before restarting it."""
        record = self._records.setdefault(name, DutyRecord())
        if record.up(now, self._stable_s):
            record.failures = 0  # it had recovered: this is a new streak
        record.failures += 1
        record.error = error
        record.failed_at = now
        record.progressed_at = None
        record.running = False
        return backoff_s(record.failures - 1, rng=self._rng)

    def record(self, name: str) -> DutyRecord | None:
        """What is known of `name` (None: never started, or removed)."""
        return self._records.get(name)

    def removed(self, name: str) -> None:
        """`name` was stopped on purpose (a service no longer routed to): it is no longer reported."""
        self._records.pop(name, None)

    def status(self, now: float) -> Mapping[str, object]:
        """Health details: DOWN while any duty is down, with each duty's state."""
        duties: dict[str, object] = {}
        for name in sorted(self._records):
            record = self._records[name]
            up = record.up(now, self._stable_s)
            duties[name] = {"status": "UP" if up else "DOWN", "restarts": record.restarts,
                            **({} if up or record.error is None else {"error": record.error})}
        down = any(not record.up(now, self._stable_s) for record in self._records.values())
        return {"status": "DOWN" if down else "UP", "tasks": duties}
