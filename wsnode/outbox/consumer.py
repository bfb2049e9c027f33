"""The outbox loop: claim a batch, push each row (dedupe key `outbox:<id>`), repeat; sleep until woken or polled.

- A batch's rows are pushed concurrently (pipelined to Redis, in id order).
- Pushed rows are deleted in the transaction that claimed them, so a crash before the commit leaves them in place
  (unlocked when the database notices the dead connection) for any node to take again; their dedupe keys make the
  second push return the first result and send nothing.
- A row that can never be pushed (bad fields) goes to `wsgate_outbox_dead` with the reason, in the same transaction.
- Redis down: the batch is rolled back (nothing deleted) and retried after a pause.
- Database connection lost: reconnect with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from wsnode.envelope import PushRequest, parse_push
from wsnode.errors import BackendUnavailable, PushError
from wsnode.ingest import IngestStatus, keep_running, reason_text
from wsnode.outbox.db import OutboxDb
from wsnode.outbox.ddl import TABLE, dedupe_key

log = logging.getLogger("wsnode.outbox")

PushFn = Callable[[PushRequest, str | None], Awaitable[Any]]  # (request, dedupe key)


class OutboxConsumer:
    """Drains one outbox table into pushes."""

    def __init__(self, connect: Callable[[], OutboxDb], *, push: PushFn, batch: int, poll_s: float,
                 retry_s: float = 1.0) -> None:
        self._connect = connect
        self._push = push
        self._batch = batch
        self._poll_s = poll_s
        self._retry_s = retry_s
        self.status = IngestStatus("outbox", TABLE)

    async def run(self) -> None:
        """Consume until cancelled; reconnect with backoff whenever a connection is lost."""
        await keep_running(self._session, self.status, log)

    async def _session(self) -> None:
        db = self._connect()
        try:
            await db.open()
            self.status.up()
            log.info("consuming the outbox table %s", TABLE)
            await self._serve(db)
        finally:
            await db.close()

    async def _serve(self, db: OutboxDb) -> None:
        while True:
            db.wake.clear()
            while True:
                try:
                    claimed, dead = await db.claim(self._handle)
                except BackendUnavailable as exc:
                    self.status.count_retry()
                    log.warning("outbox batch rolled back: %s", exc.reason)
                    self.status.set_lag(await db.oldest_age_s())
                    await asyncio.sleep(self._retry_s)
                    continue
                if dead:
                    log.warning("outbox rows dead-lettered: %s", dead)
                    self.status.count_dead(len(dead))
                if claimed - len(dead):
                    self.status.count_handled(claimed - len(dead))
                if claimed < self._batch:
                    break
            self.status.set_lag(await db.oldest_age_s())
            if db.lost:
                raise ConnectionError("outbox database connection lost")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(db.wake.wait(), self._poll_s)

    async def _handle(self, rows: list[tuple[int, str]]) -> list[str | None]:
        """Push a batch's rows concurrently: the node pipelines concurrent pushes to a shard into one round trip, in
        the order they were made, so a batch still goes out in id order."""
        results = await asyncio.gather(*(self._handle_row(row_id, payload) for row_id, payload in rows),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # Redis down (or cancelled): the batch rolls back; the pushes made are deduped later
        return [result for result in results if not isinstance(result, BaseException)]

    async def _handle_row(self, row_id: int, payload: str) -> str | None:
        try:
            await self._push(parse_push(payload), dedupe_key(row_id))
        except PushError as exc:
            return reason_text(exc.reason)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis unavailable: {exc}") from None
        except BackendUnavailable:
            raise
        except Exception as exc:  # a bug, not an outage: dead-lettered, or the row would block the outbox for ever
            log.exception("outbox row %d failed", row_id)
            return reason_text(f"{type(exc).__name__}: {exc}")
        return None
