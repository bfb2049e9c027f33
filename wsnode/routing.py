"""Per-node pub/sub channels: pushes go only to the nodes holding the users' sessions; one broadcast channel.

The subscribe loop reconnects with backoff and resubscribes; after a gap it calls `on_resubscribed` so the node can
replay from the store what its sessions may have missed while the subscription was down.

Sharded Redis (wsnode/sharding.py): a push for user U is published on U's shard, so the node subscribes to its
channel on every shard (one connection and loop each, reconnecting on its own) and to the broadcast channel on shard
0, where broadcasts are published. `subscribed` is set only while every shard's subscription is live, and
`on_resubscribed(shard)` names the shard that had the gap.
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
from wsnode.registry import RedisShards, as_shards

log = logging.getLogger("wsnode.routing")

PayloadHandler = Callable[[dict[str, Any]], None]


class Router:
    """Publishes control payloads to nodes and runs this node's subscription."""

    def __init__(self, client: aioredis.Redis | RedisShards, keys: Keys, *, node_id: str) -> None:
        self._shards = as_shards(client)
        self._keys = keys
        self._node = node_id
        self.subscribed = asyncio.Event()
        self._live = [False] * self._shards.count  # per shard: its subscription is confirmed
        self.reconnects = 0

    async def broadcast(self, *, push_id: str, tail: str) -> None:
        """A message for every session on every node."""
        payload = json.dumps({"k": "all", "p": push_id, "t": tail}, separators=(",", ":"))
        await self._shards.primary.publish(self._keys.broadcast_channel, payload)

    async def to_nodes(self, nodes: set[str], payload: dict[str, Any], *, user: str | None = None) -> None:
        """Send one control payload to each of `nodes`; on `user`'s shard (after that user's pushes) when given."""
        text = json.dumps(payload, separators=(",", ":"))
        client = self._shards.primary if user is None else self._shards.for_user(user)
        async with client.pipeline(transaction=False) as pipe:
            for node in sorted(nodes):
                pipe.publish(self._keys.node_channel(node), text)
            await pipe.execute()

    async def run(self, handle: PayloadHandler, on_resubscribed: Callable[[int], Awaitable[None]], *,
                  backoff_max_s: float = 2.0) -> None:
        """Subscribe on every shard and hand every payload to `handle` until cancelled; reconnect on errors."""
        loops = [self._run_shard(index, handle, on_resubscribed, backoff_max_s=backoff_max_s)
                 for index in range(self._shards.count)]
        if len(loops) == 1:
            await loops[0]
            return
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _set_live(self, index: int, live: bool) -> None:
        self._live[index] = live
        if all(self._live):
            self.subscribed.set()
        else:
            self.subscribed.clear()

    async def _run_shard(self, index: int, handle: PayloadHandler, on_resubscribed: Callable[[int], Awaitable[None]],
                         *, backoff_max_s: float) -> None:
        node_channel = self._keys.node_channel(self._node)
        channels = (node_channel, self._keys.broadcast_channel) if index == 0 else (node_channel,)
        client = self._shards.all[index]
        delay = 0.05
        lost = False
        while True:
            pubsub = client.pubsub()
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
                                await on_resubscribed(index)
                            self._set_live(index, True)
                            delay = 0.05
                        continue
                    if message.get("type") == "message":
                        self._dispatch(message, handle)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._live[index]:
                    log.warning("pub/sub lost (shard %d): %s", index, exc)
                self._set_live(index, False)
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
        except (TypeError, ValueError, RecursionError):
            log.warning("ignoring a malformed payload on %s", message.get("channel"))
            return
        if not isinstance(payload, dict):
            return
        try:
            handle(payload)
        except Exception:  # one bad payload must not end the subscription
            log.exception("failed to handle a payload on %s", message.get("channel"))
