"""Sessions filled from the store: after a gap in their ids, and whenever a subscription that may have missed their
messages is live again (node.py).

A resend must read the store after the subscription it follows was confirmed: what was published before then is in
the store by that read, what is published after reaches the subscription. A session that is already buffering when a
resend comes (a gap fill or its opening replay in flight) may have read the store before that confirmation, so it is
marked and reads again before it goes live; skipping it, as a plain "already catching up" would, lost the last
messages of a slot moved during a failover about once in twenty runs (tests/functional/test_cluster_node.py).

With `persist` (a Redis Cluster), a read that fails is tried again until it answers or the session closes: while a
master fails over, the data client's slot map may still name the dead master for a moment, and a gap let through
there would stay until the user's next push. Without it (one Redis or client-side shards, as before), a failed read
lets the gap through: the client sees it and resumes (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from wsnode import metrics
from wsnode.sessions import Session
from wsnode.store import MessageStore

log = logging.getLogger("wsnode.catch_up")

_RESEND_BATCH = 100  # sessions whose store reads run concurrently when the node resends after registering again
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 1.0


class CatchUp:
    """Fills sessions from `store`."""

    def __init__(self, store: MessageStore, *, persist: bool = False) -> None:
        self._store = store
        self._persist = persist
        self._again: set[str] = set()  # ids of buffering sessions that must read the store once more
        self._tasks: set[asyncio.Task[bool]] = set()

    def soon(self, session: Session) -> None:
        """Fill a session that is buffering (a gap showed) in the background."""
        task = asyncio.get_running_loop().create_task(self.fill(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def after_replay(self, session: Session) -> None:
        """A session went live after its opening replay: fill it again if a resend came meanwhile."""
        if session.id in self._again:
            self._again.discard(session.id)
            if session.begin_catch_up():
                self.soon(session)

    def forget(self, session: Session) -> None:
        self._again.discard(session.id)

    async def resend(self, sessions: list[Session]) -> None:
        """Send each of `sessions` what the store holds beyond the last id it was sent."""
        for start in range(0, len(sessions), _RESEND_BATCH):
            batch = []
            for session in sessions[start:start + _RESEND_BATCH]:
                # Buffering starts per batch, so nothing is left buffering if this is cancelled or gives up.
                if session.begin_catch_up():
                    batch.append(session)
                elif not session.closed:
                    self._again.add(session.id)
            if not all(await asyncio.gather(*(self.fill(session) for session in batch))):
                break  # the store does not answer: the rest stay live; their clients see the gap and resume

    async def fill(self, session: Session) -> bool:
        """Fill a buffering session from the store; False when the store could not be read."""
        frames: list[tuple[int, str]] = []
        metrics.CATCH_UPS.inc()
        delay = _RETRY_FIRST_S
        try:
            while True:
                self._again.discard(session.id)
                try:
                    frames = (await self._store.replay(session.user, session.last_id)).frames
                except (RedisError, OSError) as exc:
                    metrics.REDIS_ERRORS.labels("catch_up").inc()
                    if not self._persist or session.closed:
                        log.warning("could not resend to session=%s: %s", session.id, exc)
                        return False
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
                    continue
                if session.id not in self._again:
                    return True
        finally:
            session.finish_catch_up(frames)
