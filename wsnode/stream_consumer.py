"""Pushes from the Redis stream `<prefix>wsgate:push` (field `payload`), through the consumer group `wsnode`.

Each node reads as its own consumer; an entry is XACKed only after its push is stored and routed, so a node that dies
mid-way leaves it pending, and another node claims it (XAUTOCLAIM) once it has been idle for the claim time.
Entries that can never succeed (bad JSON or fields, too large or too deeply nested, or one whose handling raised an
error nobody expected) are acknowledged and copied to `<prefix>wsgate:push:dead` with the reason, so that one bad
entry never stops this consumer, nor, claimed in turn, every other node's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from wsnode import metrics
from wsnode.envelope import PushRequest, parse_push
from wsnode.errors import BackendUnavailable, PushError

log = logging.getLogger("wsnode.stream")
GROUP = "wsnode"

PushFn = Callable[[PushRequest, str], Awaitable[Any]]  # (request, dedupe key)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StreamConsumer:
    """Reads the push stream as one consumer of the group and hands each entry to `push`."""

    def __init__(self, client: aioredis.Redis, stream: str, *, consumer: str, push: PushFn,
                 claim_idle_s: float, block_s: float = 1.0, batch: int = 100) -> None:
        self._redis = client
        self._stream = stream
        self._consumer = consumer
        self._push = push
        self._claim_idle_ms = int(claim_idle_s * 1000)
        self._block_ms = int(block_s * 1000)
        self._batch = batch
        self.handled = 0

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Consume until cancelled; Redis errors are retried with backoff."""
        delay = 0.1
        last_claim = 0.0
        while True:
            try:
                await self._ensure_group()
                # Our own pending entries first (a restart with the same node id), then new ones.
                await self._read("0")
                while True:
                    now = time.monotonic()
                    if now - last_claim >= max(0.2, self._claim_idle_ms / 2000):
                        last_claim = now
                        await self._claim()
                    await self._read(">")
                    delay = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("push stream: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _read(self, start: str) -> None:
        block = self._block_ms if start == ">" else None
        reply: Any = await self._redis.xreadgroup(GROUP, self._consumer, {self._stream: start}, count=self._batch,
                                             block=block)
        for _stream, entries in reply or []:
            await self._handle(entries)

    async def _claim(self) -> None:
        reply = await self._redis.xautoclaim(self._stream, GROUP, self._consumer, self._claim_idle_ms,
                                             start_id="0-0", count=self._batch)
        entries = reply[1] if reply else []
        if entries:
            log.info("claimed %d pending push entries", len(entries))
            await self._handle(entries)

    async def _handle(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                await self._redis.xack(self._stream, GROUP, entry_id)
                continue
            raw = fields.get(b"payload", fields.get("payload"))
            try:
                if raw is None:
                    raise PushError("payload", "the stream entry needs a field named payload")
                request = parse_push(raw)
                # The entry id makes a retry after a crash (or a claim) deliver the same message, not a new one.
                await self._push(request, f"stream:{self._stream}:{_text(entry_id)}")
            except PushError as exc:
                await self._dead_letter(entry_id, exc.reason, raw)
            except BackendUnavailable as exc:
                raise RedisError(exc.reason) from None
            except (RedisError, OSError):
                raise  # retried: the entry stays pending
            except Exception as exc:
                log.exception("push stream entry %s failed", _text(entry_id))
                await self._dead_letter(entry_id, f"internal error: {type(exc).__name__}: {exc}"[:300], raw)
            await self._redis.xack(self._stream, GROUP, entry_id)
            self.handled += 1

    async def _dead_letter(self, entry_id: Any, reason: str, raw: Any) -> None:
        log.warning("push stream entry %s refused: %s", _text(entry_id), reason)
        metrics.DEAD_LETTERS.inc()
        await self._redis.xadd(self._stream + ":dead", {"entry": entry_id, "error": reason, "payload": raw or b""},
                               maxlen=10_000, approximate=True)
