"""Sharded pub/sub on a Redis Cluster: this node's channel of every slot, SSUBSCRIBEd on the master serving it.

A push's script SPUBLISHes on the receiving node's channel of the users' slot (cluster_lua.py, keys.py), on the
master that runs it: the message crosses that shard only (master and replicas), not the whole cluster bus as a plain
PUBLISH does. So the node holds one connection per master, subscribed to its channel of each slot that master
serves (16,384 channels per node in all; a sharded SSUBSCRIBE takes one slot's channels only).

Slots move and masters fail over. Redis tells: a subscription whose slot leaves its server ends with a `sunsubscribe`
from the server (resharding, manual failover), a `SSUBSCRIBE` at a server that does not serve the slot is answered
`MOVED` (then subscribed where it points), and a master that dies ends its connection (the slot map is then read
again, CLUSTER SLOTS through the data client, until the promoted replica serves). A connection that stalls without
an error is found by PINGs on it (answered in order with the subscription traffic): no answer within `stall_s` and
it is dropped like a broken one.

Nothing published while a slot had no subscription is lost: each slot whose subscription ended is marked, and once
it is subscribed again (confirmed by its server) `on_gap(slots, link_lost)` is called, for the node to resend every
session of those slots' users what the store holds beyond its last id (node.py; a push is in the store before its
script publishes). Confirmation comes first, so every push either reaches the new subscription or is in the store
when the resend reads it. When a connection broke (a master died: its replica may lack the last writes), `link_lost`
asks the node to write its sessions again too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

from wsnode import metrics
from wsnode.delivery import end_subscription
from wsnode.keys import Keys
from wsnode.slots import SLOTS

log = logging.getLogger("wsnode.cluster_pubsub")

Addr = tuple[str, int]
GapHandler = Callable[[set[int], bool], Awaitable[None]]
PayloadSink = Callable[[dict[str, Any]], object]

_PING = -1  # the FIFO entry of a PING (slots are 0..16383)
_BACKOFF_MAX_S = 1.0
_COALESCE_S = 0.01
_DEFER_MAX = 50  # a resend waits at most this many coalescing periods for answers (slots that keep moving)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def slot_of_channel(channels: dict[str, int], channel: Any) -> int | None:
    """The slot of one of this node's channels (`channels`: name -> slot), None for any other name."""
    return channels.get(_text(channel))


class _Link:
    """One connection to one master, subscribed to this node's channels of the slots it is asked to hold."""

    def __init__(self, owner: ShardedSubscriber, addr: Addr) -> None:
        self.owner = owner
        self.addr = addr
        self.confirmed: set[int] = set()  # slots whose SSUBSCRIBE this server confirmed, not ended since
        self.pending: set[int] = set()  # sent, not answered
        self.kick = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        sub = self.owner
        conn = aioredis.Connection(host=self.addr[0], port=self.addr[1], protocol=2, **sub.connection)
        fifo: deque[int] = deque()  # what each reply answers, in the order the commands were written
        reader: asyncio.Task[None] | None = None
        try:
            try:
                await asyncio.wait_for(conn.connect(), sub.stall_s)  # type: ignore[no-untyped-call]  # untyped in redis-py
            except TimeoutError:
                raise ConnectionError(f"no connection to {self.addr} within {sub.stall_s:g}s") from None
            reader = asyncio.ensure_future(self._read(conn, fifo))
            pinged = 0.0
            while not reader.done():
                wanted = sorted(sub.wanted(self))
                if wanted:
                    self.pending.update(wanted)
                    fifo.extend(wanted)
                    await conn.send_packed_command(conn.pack_commands(
                        [("SSUBSCRIBE", sub.channel_of[slot]) for slot in wanted]), check_health=False)
                if time.monotonic() - pinged >= sub.heartbeat_s:
                    pinged = time.monotonic()
                    fifo.append(_PING)
                    await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
                self.kick.clear()
                kicked = asyncio.ensure_future(self.kick.wait())
                try:
                    await asyncio.wait([reader, kicked], timeout=sub.heartbeat_s, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    kicked.cancel()
            await reader  # raises what ended it
        finally:
            await end_subscription(reader, conn.disconnect(), sub.stall_s)

    async def _read(self, conn: aioredis.Connection, fifo: deque[int]) -> None:
        sub = self.owner
        while True:
            try:
                # PINGs go out every heartbeat: a live link answers well within the stall bound.
                reply = await asyncio.wait_for(conn.read_response(timeout=math.inf), sub.stall_s)
            except TimeoutError:
                metrics.PUBSUB_STALLS.inc()
                raise ConnectionError(f"no answer from {self.addr} within {sub.stall_s:g}s") from None
            except MovedError as exc:  # the slot is served elsewhere
                slot = fifo.popleft()
                self.pending.discard(slot)
                sub.redirected(slot, (exc.host, int(exc.port)))
                continue
            except ResponseError as exc:  # another refusal (CLUSTERDOWN in a failover, ASK): ask again later
                slot = fifo.popleft()
                if slot != _PING:
                    self.pending.discard(slot)
                    sub.refused(slot, str(exc))
                continue
            self._answer(reply, fifo)

    def _answer(self, reply: Any, fifo: deque[int]) -> None:
        sub = self.owner
        if not isinstance(reply, list) or not reply:
            if fifo and fifo[0] == _PING:  # +PONG: no subscription on this connection yet
                fifo.popleft()
            return
        kind = _text(reply[0])
        if kind == "smessage":
            sub.sink({"type": "message", "channel": reply[1], "data": reply[2]})
            return
        if kind == "pong":
            if fifo and fifo[0] == _PING:
                fifo.popleft()
            return
        slot = slot_of_channel(sub.channel_of_name, reply[1])
        if kind == "ssubscribe":
            fifo.popleft()
            if slot is not None:
                self.pending.discard(slot)
                self.confirmed.add(slot)
                sub.confirmed(slot)
        elif kind == "sunsubscribe" and slot is not None:  # from the server: the slot left it
            self.confirmed.discard(slot)
            sub.lost({slot}, link_lost=False)


class ShardedSubscriber:
    """This node's sharded subscriptions on every master of a cluster; `run` keeps them where the slots are."""

    def __init__(self, data: RedisCluster, keys: Keys, node_id: str, *, connection: dict[str, Any],
                 heartbeat_s: float = 1.0, stall_s: float = 3.0) -> None:
        self._data = data
        self.connection = connection
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self.channel_of = [keys.node_slot_channel(node_id, slot) for slot in range(SLOTS)]
        self.channel_of_name = {name: slot for slot, name in enumerate(self.channel_of)}
        self._owners: dict[int, Addr] = {}
        self._links: dict[Addr, _Link] = {}
        # Slots whose subscription ended (or never began) since the last resend for them, and since when.
        self._gap: set[int] = set(range(SLOTS))
        self._ready: set[int] = set()  # gap slots subscribed again: their resend is due
        self._link_lost = False
        self._unsubscribed_at: dict[int, float] = dict.fromkeys(range(SLOTS), time.monotonic())
        self._dirty = asyncio.Event()
        self._on_gap: GapHandler | None = None
        self._resends: set[asyncio.Task[None]] = set()
        self._resend_due = False
        self._deferred = 0
        self.sink: PayloadSink = lambda message: None
        self.all_subscribed = asyncio.Event()
        self.started = False  # every slot was subscribed once (the node is UP only from then on)
        self.moves = 0  # subscriptions that ended or were redirected (tests and logs)

    # ---- state, as the links report it -------------------------------------------------------------------------

    def wanted(self, link: _Link) -> set[int]:
        """Slots `link`'s master serves, as far as known, that it neither holds nor was asked for."""
        return {slot for slot, addr in self._owners.items()
                if addr == link.addr and slot not in link.confirmed and slot not in link.pending}

    def subscribed(self, slot: int) -> bool:
        return any(slot in link.confirmed for link in self._links.values())

    def unsubscribed(self) -> int:
        """How many slots have no confirmed subscription now."""
        return len(self._unsubscribed_at)

    def confirmed(self, slot: int) -> None:
        self._unsubscribed_at.pop(slot, None)
        if slot in self._gap:
            self._ready.add(slot)
            self._resend_soon()
        if not self._unsubscribed_at:
            self.all_subscribed.set()
            self.started = True

    def lost(self, slots: set[int], *, link_lost: bool) -> None:
        """Subscriptions of `slots` ended: resend for them once they are subscribed again."""
        self.moves += len(slots)
        self._gap |= slots
        self._link_lost |= link_lost
        now = time.monotonic()
        for slot in slots:
            if self.subscribed(slot):
                self._ready.add(slot)
            else:
                self._ready.discard(slot)
                self._unsubscribed_at.setdefault(slot, now)
                self.all_subscribed.clear()
        self._resend_soon()  # those already subscribed elsewhere (the new owner answered first) need it now
        self._dirty.set()

    def redirected(self, slot: int, addr: Addr) -> None:
        """A server answered MOVED for `slot`: subscribe where it points (and resend: it may have moved meanwhile)."""
        self._owners[slot] = addr
        self.lost({slot}, link_lost=False)

    def refused(self, slot: int, reason: str) -> None:
        log.info("SSUBSCRIBE of slot %d refused (%s): asking again", slot, reason[:120])
        self.lost({slot}, link_lost=False)

    def _resend_soon(self) -> None:
        """One resend for the gap slots subscribed again, once no SSUBSCRIBE is awaiting its answer: a master
        confirms thousands of slots, one reply each, and every resend walks all the sessions of the node."""
        if self._on_gap is None or not self._ready or self._resend_due:
            return
        self._resend_due = True
        asyncio.get_running_loop().call_later(_COALESCE_S, self._start_resend)

    def _start_resend(self) -> None:
        self._resend_due = False
        if any(link.pending for link in self._links.values()) and self._deferred < _DEFER_MAX:
            self._deferred += 1
            self._resend_soon()
            return
        self._deferred = 0
        ready, self._ready = self._ready, set()
        if not ready or self._on_gap is None:
            return
        self._gap -= ready
        link_lost, self._link_lost = self._link_lost, False
        task = asyncio.ensure_future(self._on_gap(ready, link_lost))
        self._resends.add(task)
        task.add_done_callback(self._resends.discard)

    # ---- the loop ----------------------------------------------------------------------------------------------

    async def run(self, sink: PayloadSink, on_gap: GapHandler) -> None:
        """Keep the subscriptions until cancelled, handing each message to `sink` (as redis-py's pub/sub would)."""
        self.sink, self._on_gap = sink, on_gap
        delay = 0.05
        try:
            while True:
                self._dirty.clear()
                if await self._read_slot_map():
                    self._place_links()
                    delay = 0.05
                else:
                    delay = min(delay * 2, _BACKOFF_MAX_S)
                await self._dirty.wait()
                # A master that died keeps failing until its replica is promoted: do not spin on it.
                await asyncio.sleep(delay if self._unsubscribed_at else 0)
                if self._unsubscribed_at:
                    delay = min(delay * 2, _BACKOFF_MAX_S)
        finally:
            self._on_gap = None
            links, self._links = list(self._links.values()), {}
            for link in links:
                if link.task is not None:
                    link.task.cancel()
            await asyncio.gather(*(link.task for link in links if link.task is not None), return_exceptions=True)
            for task in list(self._resends):
                task.cancel()

    async def _read_slot_map(self) -> bool:
        try:
            await asyncio.wait_for(self._data.nodes_manager.initialize(), self.stall_s)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            log.warning("sharded pub/sub: cannot read the slot map: %s", exc)
            return False
        cache = self._data.nodes_manager.slots_cache
        self._owners = {slot: (str(nodes[0].host), int(nodes[0].port)) for slot, nodes in cache.items() if nodes}
        return True

    def _place_links(self) -> None:
        needed = set(self._owners.values())
        for addr in needed - set(self._links):
            link = self._links[addr] = _Link(self, addr)
            link.task = asyncio.ensure_future(self._keep(link))
        for addr, link in self._links.items():
            link.kick.set()
            if addr not in needed and link.task is not None and not link.confirmed and not link.pending:
                link.task.cancel()  # serves nothing any more (its slots left, each with a sunsubscribe)

    async def _keep(self, link: _Link) -> None:
        try:
            await link.run()
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("sharded pub/sub lost (%s:%d): %s", *link.addr, exc)
            metrics.PUBSUB_RECONNECTS.inc()
        finally:
            if self._links.get(link.addr) is link:
                del self._links[link.addr]
            held, link.confirmed, link.pending = link.confirmed | link.pending, set(), set()
            if held:
                self.lost(held, link_lost=True)
            self._dirty.set()
