"""Per-node pub/sub channels: pushes go only to the nodes holding the users' sessions; one broadcast channel.

The subscribe loop reconnects with backoff and resubscribes; after a gap it calls `on_resubscribed` so the node can
replay from the store what its sessions may have missed while the subscription was down.

Sharded Redis (wsnode/sharding.py): a push for user U is published on U's shard, so the node subscribes to its
channel on every shard (one connection and loop each, reconnecting on its own) and to the broadcast channel on shard
0, where broadcasts are published. `subscribed` is set only while every shard's subscription is live, and
`on_resubscribed(shard)` names the shard that had the gap.

A subscription can stall without an error: a silent partition leaves its TCP connection open, with nothing arriving,
and when the link comes back the connection may stay dead. So each shard's loop publishes a heartbeat to this node's
own channel every `heartbeat_s` (through the pool, as pushes are published) and expects it back on the subscription:
with no heartbeat (nor subscribe confirmation) for `stall_s`, the subscription counts as lost. It is then handled like
a reset one (not live, new connection, subscribe, `on_resubscribed`), and the shard's pooled connections are dropped
too, since they crossed the same link.

On a shard with a lane (plain TCP or a unix socket, `wsnode/redis_lane.py`) the subscription is a lean connection
(`wsnode/subscriber.py`) whose messages are dispatched as they are parsed; elsewhere it is redis-py's `PubSub`.

Redis Cluster: messages for a user's nodes go by `SPUBLISH` on their channels of the user's slot, received by
cluster_pubsub.py; the plain subscription here carries broadcasts, the heartbeat, and the plain node channel that
nodes of earlier versions publish to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from wsnode import metrics, nodemsg
from wsnode.keys import Keys
from wsnode.nodemsg import Broadcast, Heartbeat, NodeMessage, NodeMessageError
from wsnode.presence import RedisShards, as_shards
from wsnode.redis_lane import LanedPool, LaneTarget
from wsnode.subscriber import Subscription, subscribe

log = logging.getLogger("wsnode.delivery")

PayloadHandler = Callable[[NodeMessage], None]


async def end_subscription(helper: asyncio.Task[Any] | None, close: Awaitable[Any], timeout_s: float) -> None:
    """Stop a subscription's helper task (heartbeat, reader), then `close` its connection, within `timeout_s`: over
    a stalled link a close could wait for the socket timeout."""
    if helper is not None:
        helper.cancel()
        await asyncio.gather(helper, return_exceptions=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close, timeout_s)


class SubscriptionStalled(RedisError):
    """No heartbeat came back on the subscription within the bound."""


class Router:
    """Publishes node messages (wsnode/nodemsg.py) to nodes and runs this node's subscription."""

    def __init__(self, client: aioredis.Redis | RedisShards, keys: Keys, *, node_id: str,
                 heartbeat_s: float = 1.0, stall_s: float = 3.0, sharded: Any | None = None) -> None:
        """`sharded`: on a Redis Cluster, its client; messages for a user's nodes then go by SPUBLISH on their
        channels of the user's slot (cluster_pubsub.py), and `client` carries broadcasts and heartbeats only."""
        self._shards = as_shards(client)
        self._sharded = sharded
        self._keys = keys
        self._node = node_id
        self._heartbeat_s = heartbeat_s
        self._stall_s = stall_s
        # Tells this process's heartbeats from those of an earlier process with the same node id.
        self._token = uuid.uuid4().hex[:12]
        self.stalls = 0
        self.subscribed = asyncio.Event()
        self._live = [False] * self._shards.count  # per shard: its subscription is confirmed
        self.reconnects = 0

    async def broadcast(self, *, push_id: str, tail: str) -> None:
        """A message for every session on every node."""
        await self._shards.primary.publish(self._keys.broadcast_channel,
                                           nodemsg.encode(Broadcast(push_id=push_id, tail=tail)))

    async def to_nodes(self, nodes: set[str], message: NodeMessage, *, user: str | None = None) -> None:
        """Send one message to each of `nodes`; on `user`'s shard (after that user's pushes) when given."""
        text = nodemsg.encode(message)
        if self._sharded is not None and user is not None:
            slot = self._keys.user_slot(user)
            async with self._sharded.pipeline(transaction=False) as pipe:
                for node in sorted(nodes):
                    pipe.spublish(self._keys.node_slot_channel(node, slot), text)
                await pipe.execute()
            return
        client = self._shards.primary if user is None else self._shards.for_user(user)
        async with client.pipeline(transaction=False) as pipe:
            for node in sorted(nodes):
                pipe.publish(self._keys.node_channel(node), text)
            await pipe.execute()

    async def run(self, handle: PayloadHandler, on_resubscribed: Callable[[int], Awaitable[None]], *,
                  backoff_max_s: float = 2.0) -> None:
        """Subscribe on every shard and hand every message to `handle` until cancelled; reconnect on errors."""
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

    def live(self, index: int) -> bool:
        """Whether shard `index`'s subscription is confirmed (and its heartbeats come back)."""
        return self._live[index]

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
        pool = client.connection_pool
        if isinstance(pool, LanedPool) and pool.lane is not None:
            await self._run_lean(index, pool.lane.target, client, channels, handle, on_resubscribed,
                                 backoff_max_s=backoff_max_s)
            return
        delay = 0.05
        lost = False
        while True:
            pubsub = client.pubsub()
            beat: asyncio.Task[None] | None = None
            proof = time.monotonic()  # last subscribe confirmation or heartbeat back: the subscription works
            try:
                try:
                    # Connecting (CLIENT SETNAME) over a stalled link would wait for the socket timeout.
                    await asyncio.wait_for(pubsub.subscribe(*channels), self._stall_s)
                except TimeoutError:
                    raise SubscriptionStalled(f"no answer to subscribe within {self._stall_s:g}s") from None
                confirmed = 0
                while True:
                    if time.monotonic() - proof > self._stall_s:
                        raise SubscriptionStalled(f"no heartbeat back within {self._stall_s:g}s")
                    message = await pubsub.get_message(timeout=min(1.0, self._heartbeat_s))
                    if message is None:
                        continue
                    if message.get("type") == "subscribe":
                        proof = time.monotonic()
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
                                proof = time.monotonic()
                            self._set_live(index, True)
                            delay = 0.05
                            if beat is None:
                                beat = asyncio.ensure_future(self._beat(client, node_channel))
                        continue
                    if message.get("type") == "message" and self.dispatch(message, handle):
                        proof = time.monotonic()
            except (RedisError, OSError) as exc:
                lost = True
                delay = await self._lost(index, client, exc, delay, backoff_max_s)
            finally:
                await end_subscription(beat, pubsub.aclose(), self._stall_s)

    async def _run_lean(self, index: int, target: LaneTarget, client: aioredis.Redis, channels: tuple[str, ...],
                        handle: PayloadHandler, on_resubscribed: Callable[[int], Awaitable[None]], *,
                        backoff_max_s: float) -> None:
        """`_run_shard` over a lean connection (subscriber.py): messages are dispatched as they are parsed, and
        this loop only wakes up to tell a stall (no heartbeat back for `stall_s`) or to handle the end."""
        delay = 0.05
        lost = False
        proof = time.monotonic()  # last subscribe confirmation or heartbeat back: the subscription works

        def on_message(channel: bytes, data: bytes) -> None:
            nonlocal proof
            if self.dispatch_data(channel, data, handle):
                proof = time.monotonic()

        while True:
            subscription: Subscription | None = None
            beat: asyncio.Task[None] | None = None
            try:
                try:
                    subscription = await subscribe(target, channels, on_message, timeout_s=self._stall_s, hold=lost)
                except TimeoutError:
                    raise SubscriptionStalled(f"no answer to subscribe within {self._stall_s:g}s") from None
                if lost:
                    # Before turning healthy: sessions registered again and missed messages resent (what arrived
                    # since subscribing is held back, in order), so nothing accepted from now on can miss a session.
                    lost = False
                    await on_resubscribed(index)
                    subscription.release()
                proof = time.monotonic()
                self._set_live(index, True)
                delay = 0.05
                beat = asyncio.ensure_future(self._beat(client, channels[0]))
                while True:
                    left = proof + self._stall_s - time.monotonic()
                    if left <= 0:
                        raise SubscriptionStalled(f"no heartbeat back within {self._stall_s:g}s")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(subscription.ended), left)  # raises how it ended
                    if subscription.ended.done():
                        raise RedisConnectionError(f"subscription to {target.where} ended")
            except (RedisError, OSError) as exc:
                lost = True
                delay = await self._lost(index, client, exc, delay, backoff_max_s)
            finally:
                await end_subscription(beat, _closed(subscription), self._stall_s)

    async def _lost(self, index: int, client: aioredis.Redis, exc: Exception, delay: float,
                    backoff_max_s: float) -> float:
        """A subscription ended with `exc`: not live, counted, the pool dropped after a stall, then the backoff
        (`delay`); the next backoff."""
        if self._live[index] or isinstance(exc, SubscriptionStalled):
            log.warning("pub/sub lost (shard %d): %s", index, exc)
        self._set_live(index, False)
        self.reconnects += 1
        metrics.PUBSUB_RECONNECTS.inc()
        if isinstance(exc, SubscriptionStalled):
            self.stalls += 1
            metrics.PUBSUB_STALLS.inc()
            await self._drop_pool(client)
        await asyncio.sleep(delay)
        return min(delay * 2, backoff_max_s)

    async def _beat(self, client: aioredis.Redis, channel: str) -> None:
        """Publish this process's heartbeat to its own channel every heartbeat period, without waiting for the
        previous one's reply: slow replies must not slow the beat down, or they would pass for a stall."""
        payload = nodemsg.encode(Heartbeat(self._token))
        pending: set[asyncio.Task[None]] = set()
        most = int(self._stall_s / self._heartbeat_s) + 1  # a stalled link does not pile publishes up
        try:
            while True:
                if len(pending) < most:
                    task = asyncio.ensure_future(self._publish(client, channel, payload))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(self._heartbeat_s)
        finally:
            for task in pending:
                task.cancel()

    async def _publish(self, client: aioredis.Redis, channel: str, payload: str) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(client.publish(channel, payload), self._stall_s)

    async def _drop_pool(self, client: aioredis.Redis) -> None:
        """Disconnect every pooled connection of a shard whose subscription stalled: they crossed the same link,
        and one left stalled would hold each command on it until the socket timeout."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.connection_pool.disconnect(), self._stall_s)

    def dispatch(self, message: dict[str, Any], handle: PayloadHandler) -> bool:
        """Hand a node message to `handle`; True when it was this process's own heartbeat (not handed on)."""
        data = message.get("data")
        if not isinstance(data, str | bytes):
            return False
        return self.dispatch_data(message.get("channel"), data, handle)

    def dispatch_data(self, channel: Any, data: str | bytes, handle: PayloadHandler) -> bool:
        """`dispatch` for a message's channel and data."""
        try:
            decoded = nodemsg.decode(data)
        except NodeMessageError as exc:  # one bad payload must not end the subscription
            log.warning("ignoring a malformed payload on %s: %s", channel, exc.reason)
            return False
        if isinstance(decoded, Heartbeat):
            return decoded.token == self._token
        try:
            handle(decoded)
        except Exception:  # one bad payload must not end the subscription
            log.exception("failed to handle a payload on %s", channel)
        return False


async def _closed(subscription: Subscription | None) -> None:
    if subscription is not None:
        subscription.close()
        await subscription.ended
