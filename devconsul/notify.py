"""Wake-ups for blocking queries: one asyncio.Event per watch topic, replaced every time it fires."""

from __future__ import annotations

import asyncio

from devconsul.catalog import Changes


class Notifier:
    """Blocking queries wait on `watch(topic)`; `publish(changes)` sets the events of the touched topics."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.closed = False

    def watch(self, topic: str) -> asyncio.Event:
        """The event set on the next change of `topic` (take it before reading the state, so no change is missed)."""
        event = self._events.get(topic)
        if event is None:
            event = self._events[topic] = asyncio.Event()
            if self.closed:
                event.set()
        return event

    def publish(self, changes: Changes) -> None:
        """Wake every waiter of the topics in `changes`; later watchers get a fresh event."""
        for topic in changes.topics:
            event = self._events.pop(topic, None)
            if event is not None:
                event.set()

    def close(self) -> None:
        """Release every waiter now and from now on (shutdown must not wait for blocking queries to time out)."""
        self.closed = True
        for event in self._events.values():
            event.set()
