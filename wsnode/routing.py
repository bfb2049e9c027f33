"""Per-node pub/sub channels: pushes go only to the nodes holding the users' sessions; one broadcast channel.

The subscribe loop reconnects with backoff and resubscribes; after a gap it calls `on_resubscribed` so the node can
replay from the store what its sessions may have missed while the subscription was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsnode import metrics
from wsnode.keys import Keys

log = logging.getLogger("wsnode.routing")

PayloadHandler = Callable[[dict[str, Any]], None]


class Router:
    """Publishes control payloads to nodes and runs this node's subscription."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, node_id: str) -> None:
        self._redis = client
        self._keys = keys
        self._node = node_id
        self.subscribed = asyncio.Event()
        self.reconnects = 0

    async def broadcast(self, *, push_id: str, tail: str) -> None:
        """A message for every session on every node."""
        payload = json.dumps({"k": "all", "p": push_id, "t": tail}, separators=(",", ":"))
        await self._redis.publish(self._keys.broadcast_channel, payload)

    async def to_nodes(self, nodes: set[str], payload: dict[str, Any]) -> None:
        """Send one control payload to each of `nodes`."""
        text = json.dumps(payload, separators=(",", ":"))
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in sorted(nodes):
                pipe.publish(self._keys.node_channel(node), text)
            await pipe.execute()

    async def run(self, handle: PayloadHandler, on_resubscribed: Callable[[], Awaitable[None]], *,
                  backoff_max_s: float = 2.0) -> None:
        """Subscribe and hand every payload to `handle` until cancelled; reconnect on errors."""
        channels = (self._keys.node_channel(self._node), self._keys.broadcast_channel)
        delay = 0.05
        lost = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                confirmed = 0
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        confirmed += 1
                        if confirmed > len(channels) and confirmed % len(channels) == 0:
                            # redis-py reconnected by itself and subscribed again: messages may have been missed
                            # (and Redis may have restarted empty), exactly as after an error.
                            log.warning("pub/sub reconnected by the client library")
                            lost = True
                            self.reconnects += 1
                            metrics.PUBSUB_RECONNECTS.inc()
                        if confirmed % len(channels) == 0:
                            if lost:
                                # Before turning healthy: sessions registered again and missed messages resent,
                                # so nothing accepted from now on can miss a session that stayed connected.
                                lost = False
                                await on_resubscribed()
                            self.subscribed.set()
                            delay = 0.05
                        continue
                    if message.get("type") == "message":
                        self._dispatch(message, handle)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    log.warning("pub/sub lost: %s", exc)
                self.subscribed.clear()
                lost = True
                self.reconnects += 1
                metrics.PUBSUB_RECONNECTS.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, backoff_max_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, message: dict[str, Any], handle: PayloadHandler) -> None:
        data = message.get("data")
        if not isinstance(data, str | bytes):
            return
        try:
            payload = json.loads(data)
        except (TypeError, ValueError):
            log.warning("ignoring a malformed payload on %s", message.get("channel"))
            return
        if not isinstance(payload, dict):
            return
        try:
            handle(payload)
        except Exception:  # one bad payload must not end the subscription
            log.exception("failed to handle a payload on %s", message.get("channel"))
