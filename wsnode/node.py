"""The node's core: sessions here, pushes in, payloads from other nodes out to sockets, refresh and drain.

No session is stranded (docs/operations.md): whenever the node registers its sessions again (presence had lapsed, a
refresh failed, the subscription was lost or stalled) it resends each session what the store holds beyond the last
id that session was sent; a gap in a session's ids is filled from the store (sessions.py); and when the node has been
unable to route (subscription not live, or its presence unconfirmed) for longer than `--route-grace`, it closes its
sessions with 1013 so that clients come back through the gateway to a node that can, and resume with `since=`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wsnode import metrics
from wsnode.admission import Admission, Admitter, ClusterAdmitter
from wsnode.catch_up import CatchUp
from wsnode.cluster_health import cluster_state, master_pings
from wsnode.cluster_presence import ClusterSessionRegistry
from wsnode.cluster_pubsub import ShardedSubscriber
from wsnode.cluster_store import ClusterMessageStore
from wsnode.delivery import Router
from wsnode.envelope import (
    PushRequest,
    encode_message,
    encode_welcome,
    ephemeral_id,
    message_tail,
    parse_stored_id,
    text_frame,
)
from wsnode.errors import AuthError, BackendUnavailable
from wsnode.health_report import health_details
from wsnode.keys import Keys
from wsnode.limits import ALLOWED, FRAME_RATE_SPENT, UserLimits
from wsnode.nodemsg import Broadcast, Disconnect, Evict, NodeMessage, Push, Unread
from wsnode.presence import RedisShards, SessionRegistry, as_shards, gather_all
from wsnode.redis_connect import ClusterClients
from wsnode.sessions import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER, LocalSessions, Session
from wsnode.settings import NodeSettings
from wsnode.store import MessageStore, PushResult, Replay

log = logging.getLogger("wsnode.node")

_ROUTE_WATCH_S = 0.25  # how often the node checks that it can route


def new_id() -> str:
    """A short random id (sessions, pushes)."""
    return uuid.uuid4().hex[:16]


class Node:
    """Ties the local sessions to Redis: registry, store and router."""

    def __init__(self, settings: NodeSettings, client: aioredis.Redis | RedisShards | None = None, *,
                 cluster: ClusterClients | None = None) -> None:
        self.settings = settings
        self.cluster = cluster
        if cluster is not None:
            # A Redis Cluster is one "shard" to the rest of the node: RedisCluster routes each key to its slot.
            data: Any = cluster.data
            self.shards = as_shards(data)
        elif client is not None:
            self.shards = as_shards(client)
        else:
            raise ValueError("Node needs a Redis client or a cluster")
        # Shard 0: broadcasts (and their idempotency markers) and the push/publish streams.
        self.redis = self.shards.primary
        self.keys = Keys(settings.redis_prefix, cluster=cluster is not None)
        self.sessions = LocalSessions()
        if cluster is not None:
            self.registry: SessionRegistry = ClusterSessionRegistry(cluster.data, self.keys, node_id=settings.node_id,
                                                                    ttl_s=settings.session_ttl_s)
            self.store: MessageStore = ClusterMessageStore(
                cluster.data, self.keys, max_count=settings.store_max_count, max_age_s=settings.store_max_age_s,
                min_replicas=settings.redis_min_replicas, wait_timeout_s=settings.redis_wait_timeout_s)
            self.admitter: Admitter = ClusterAdmitter(cluster.data, self.keys, node_id=settings.node_id)
        else:
            self.registry = SessionRegistry(self.shards, self.keys, node_id=settings.node_id,
                                            ttl_s=settings.session_ttl_s)
            self.store = MessageStore(self.shards, self.keys, max_count=settings.store_max_count,
                                      max_age_s=settings.store_max_age_s, min_replicas=settings.redis_min_replicas,
                                      wait_timeout_s=settings.redis_wait_timeout_s)
            self.admitter = Admitter(self.shards, self.keys, node_id=settings.node_id)
        pubsub = self.shards if cluster is None else as_shards(cluster.pubsub)
        self.router = Router(pubsub, self.keys, node_id=settings.node_id, heartbeat_s=settings.pubsub_heartbeat_s,
                             stall_s=settings.pubsub_timeout_s, sharded=None if cluster is None else cluster.data)
        # On a cluster, node messages of users come by sharded pub/sub, one connection per master (cluster_pubsub.py).
        self.sharded = None if cluster is None else ShardedSubscriber(
            cluster.data, self.keys, settings.node_id, connection=cluster.connection,
            heartbeat_s=settings.pubsub_heartbeat_s, stall_s=settings.pubsub_timeout_s)
        self.catch_up = CatchUp(self.store, persist=cluster is not None)
        self.limits = UserLimits(self.shards, self.keys, publish_rate_per_s=settings.publish_rate_per_s,
                                 publish_bytes_rate_per_s=settings.publish_bytes_rate_per_s,
                                 stream_max_bytes=settings.publish_stream_max_bytes)
        self.draining = False
        self.redis_ok = True
        self._pubsub_runs = 0
        # Per shard: the loop time since which the node cannot route pushes of that shard's users (None: it can).
        self.unroutable_since: list[float | None] = [None] * self.shards.count
        self._recovery: asyncio.Task[None] | None = None

    # ---- pushes -------------------------------------------------------------------------------------------------

    async def push(self, request: PushRequest, *, source: str, dedupe_key: str | None = None) -> dict[str, Any]:
        """Store (if asked) and route a push; the answer of the push API. BackendUnavailable when Redis is down.

        `dedupe_key` makes a retry harmless: the first result is returned and nothing is sent again.
        """
        push_id = new_id()
        ts_ms = int(time.time() * 1000)
        try:
            if request.to_all:
                tail = message_tail(module=request.module, event=request.event, data_json=request.data_json,
                                    ts_ms=ts_ms)
                # The marker has the shape the push script keeps for user pushes ([online, stored, ids, push id]):
                # a key used for a broadcast and then for a user push must not make that script fail to decode it.
                fresh = dedupe_key is None or await self.redis.set(
                    self.keys.dedupe(dedupe_key), json.dumps([0, 0, "{}", push_id]), nx=True,
                    px=int(self.settings.store_max_age_s * 1000))
                if fresh:
                    await self.router.broadcast(push_id=push_id, tail=tail)
                online, _nodes = await self.registry.counts()
                result = PushResult(online_sessions=online, stored=0, ids={}, push_id=push_id)
            else:
                result = await self.store.push_to_users(request, push_id=push_id, ts_ms=ts_ms, dedupe_key=dedupe_key)
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("push").inc()
            raise BackendUnavailable(f"redis unavailable: {exc}") from None
        metrics.PUSHES.labels(source).inc()
        return {"id": result.push_id, "online_sessions": result.online_sessions, "stored": result.stored,
                "ids": result.ids}

    def handle_payload(self, message: NodeMessage) -> None:
        """A message from the pub/sub channels (wsnode/nodemsg.py): deliver to the sessions here."""
        match message:
            case Push(push_id, tail, deliveries):
                for item in deliveries:
                    for session in self.sessions.of_user(item.user):
                        if item.frame is not None and item.unread is not None:
                            if session.deliver_stored_and_unread(item.position, item.frame, item.unread):
                                self.catch_up.soon(session)
                            continue
                        if item.frame is not None:
                            if session.deliver_stored(item.position, item.frame):
                                self.catch_up.soon(session)
                        else:
                            session.deliver_ephemeral(push_id, tail)
                        if item.unread is not None:
                            session.deliver_unread(item.unread)
            case Broadcast(push_id, tail):
                # Most sessions share their last stored id (often 0): build each distinct frame once (text and wire).
                frames: dict[int, tuple[str, bytes]] = {}
                for session in self.sessions:
                    if session.replaying:
                        session.deliver_ephemeral(push_id, tail)
                        continue
                    pair = frames.get(session.last_id)
                    if pair is None:
                        text = encode_message(ephemeral_id(session.last_id, push_id), tail)
                        pair = frames[session.last_id] = (text, text_frame(text))
                    session.send_wire(*pair)
            case Unread(user, counts):
                for session in self.sessions.of_user(user):
                    session.deliver_unread(counts)
            case Disconnect(user):
                for session in self.sessions.of_user(user):
                    session.close_soon(CLOSE_POLICY, "disconnected by the server")
            case Evict(user, evicted):
                for session in self.sessions.of_user(user):
                    if session.id in evicted:
                        session.close_soon(CLOSE_POLICY, "too many sessions of this user")

    async def disconnect_user(self, user: str, *, revoke: bool = False) -> int:
        """Close every session of `user` on every node; the number of sessions found.

        With `revoke`, tokens of the user issued before now are refused at the handshake for `revoke_ttl_s`.
        """
        try:
            if revoke:
                # Whole seconds (iat is in seconds): a token issued within this second is refused too.
                await self.shards.for_user(user).set(self.keys.user_revoked(user), math.ceil(time.time()),
                                                     ex=max(1, int(self.settings.revoke_ttl_s)))
            found = await self.registry.presence(user)
            await self.router.to_nodes({s.node for s in found}, Disconnect(user), user=user)
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("disconnect").inc()
            raise BackendUnavailable(f"redis unavailable: {exc}") from None
        return len(found)

    # ---- sessions -----------------------------------------------------------------------------------------------

    async def admit(self, user: str, issued_at: float | None) -> int:
        """AuthError(401) when the user's tokens from before `issued_at` were revoked; else the number of sessions the
        user holds on any node. open_session checks both itself; this is for handshakes refused before it."""
        try:
            async with self.shards.for_user(user).pipeline(transaction=False) as pipe:
                pipe.get(self.keys.user_revoked(user))
                pipe.zcard(self.keys.user_sessions(user))
                revoked, held = await pipe.execute()
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("connect").inc()
            raise BackendUnavailable(f"redis unavailable: {exc}") from None
        if revoked is not None and (issued_at is None or issued_at < int(revoked)):
            metrics.REFUSALS.labels("revoked").inc()
            raise AuthError("token revoked")
        return int(held)

    async def evict_oldest(self, session: Session) -> None:
        """Close the user's oldest sessions (1008) on every node while they hold more than the limit."""
        try:
            found = await self.registry.presence(session.user)
            excess = len(found) - self.settings.max_sessions_per_user
            if excess <= 0:
                return
            others = sorted((s for s in found if s.session != session.id), key=lambda s: (s.since_ms, s.session))
            oldest = others[:excess]
            metrics.REFUSALS.labels("sessions_per_user").inc(len(oldest))
            await self.router.to_nodes({s.node for s in oldest},
                                       Evict(session.user, tuple(s.session for s in oldest)), user=session.user)
        except (RedisError, OSError) as exc:  # the limit is enforced again at the user's next connect
            metrics.REDIS_ERRORS.labels("evict").inc()
            log.warning("could not enforce the session limit of user=%s: %s", session.user, exc)

    async def open_session(self, session: Session, *, since: int | None, check: bool = False,
                           issued_at: float | None = None) -> Admission:
        """Index and register the session (live deliveries buffer from now on) and read the store in one round trip;
        with `check`, AuthError(401) first if revoked for `issued_at`, and count the user's sessions (admission.py)."""
        try:
            if not self.registry.alive:
                # Before the first heartbeat (or after a long stall) this node's sessions are invisible to presence
                # and routing: mark the node alive first (it writes every session here again), this one not yet indexed
                # so that, if revoked, it is never written.
                await self.refresh_registry()
            self.sessions.add(session)
            admission = await self.admitter.open(session.id, session.user, since=since, check=check,
                                                 issued_at=issued_at)
            if admission is None:
                metrics.REFUSALS.labels("revoked").inc()
                raise AuthError("token revoked")  # and out of the index below: nothing was written
            return admission
        except (RedisError, OSError) as exc:
            self.sessions.remove(session)
            with contextlib.suppress(RedisError, OSError):
                await self.registry.remove([(session.id, session.user)])
            metrics.REDIS_ERRORS.labels("connect").inc()
            raise BackendUnavailable(f"redis unavailable: {exc}") from None
        except BaseException:
            self.sessions.remove(session)
            raise

    def go_live(self, session: Session, replay: Replay, *, since: int | None) -> None:
        """After the upgrade: welcome, replayed frames, buffered live frames, then live (see sessions.py)."""
        welcome = encode_welcome(session=session.id, user=session.user, node=self.settings.node_id,
                                 unread=replay.unread, recovered=replay.recovered, last=replay.position)
        if session.finish_replay(welcome, replay.frames, position=replay.position):
            self.catch_up.soon(session)
        else:
            self.catch_up.after_replay(session)  # a resend came while the store was read for the replay
        metrics.CONNECTS.inc()
        log.info("session open session=%s user=%s since=%s replayed=%d", session.id, session.user, since,
                 len(replay.frames))

    async def close_session(self, session: Session) -> None:
        """Forget a closed session here and in Redis."""
        self.sessions.remove(session)
        self.catch_up.forget(session)
        try:
            await self.registry.remove([(session.id, session.user)])
        except (RedisError, OSError) as exc:
            metrics.REDIS_ERRORS.labels("remove").inc()
            log.warning("could not remove session=%s from redis: %s", session.id, exc)
        log.info("session closed session=%s user=%s", session.id, session.user)

    async def ack(self, session: Session, message_id: str) -> None:
        """A read receipt; counts change for every session of the user (through pub/sub)."""
        if parse_stored_id(message_id) is None:
            return  # an ephemeral message: nothing stored, nothing unread
        await self.store.ack(session.user, message_id)

    async def publish(self, session: Session, module: str, data: Any, ref: Any) -> str | None:
        """A client's publish, handed to backends on the publish stream within the user's budget; None when
        accepted, else the name of the budget it exceeded."""
        fields: dict[str, Any] = {
            "user": session.user, "session": session.id, "node": self.settings.node_id, "module": module,
            "data": json.dumps(data, separators=(",", ":")), "ref": json.dumps(ref, separators=(",", ":")),
            "ts": int(time.time() * 1000)}
        size = sum(len(str(value).encode()) for value in fields.values())
        verdict = await self.limits.spend_publish(session.user, size)
        if verdict != ALLOWED:
            refused = "publish_rate" if verdict == FRAME_RATE_SPENT else "publish_bytes_rate"
            metrics.REFUSALS.labels(refused).inc()
            return refused
        await self.limits.append_publish(fields)
        return None

    async def resync(self, shard: int | None = None) -> None:
        """After a pub/sub gap (on one shard, or all when None): register the sessions again, then send each what the
        store holds beyond its last."""
        try:
            # Redis may have restarted empty: until this, pushes for these users would not be routed here.
            await self.refresh_registry(full=True, shard=shard)  # resends once the sessions are written again
        except (RedisError, OSError):
            await self.resend({shard} if shard is not None else set(range(self.shards.count)))

    async def refresh_registry(self, *, full: bool = False, shard: int | None = None) -> None:
        """Mark the node alive (registry.refresh); when that wrote the sessions again, resend from the store what
        they may have missed while presence lapsed (pushes meanwhile were stored, but routed to no session here)."""
        rewritten = await self.registry.refresh(self.sessions.pairs(), full=full, shard=shard)
        if rewritten:
            await self.resend(rewritten)

    async def resend(self, shards: set[int]) -> None:
        """Send every session of users on `shards` what the store holds beyond the last id it was sent."""
        await self.catch_up.resend([s for s in self.sessions if not s.closed and (
            self.shards.count == 1 or self.shards.index_of(s.user) in shards)])

    async def sharded_gap(self, slots: set[int], link_lost: bool) -> None:
        """On a cluster, the subscriptions of `slots` are live again after a gap: when a master's connection broke,
        register the sessions again and resend to all; else (slots moved) resend to the sessions of their users."""
        if link_lost:
            await self.resync()
            return
        await self.catch_up.resend([s for s in self.sessions
                                    if not s.closed and self.keys.user_slot(s.user) in slots])

    # ---- background loops ---------------------------------------------------------------------------------------

    async def pubsub_loop(self) -> None:
        """The pub/sub reader (supervised). When it runs again after a failure, upgrades wait for the new
        subscription, and what the sessions here missed meanwhile is resent from the store once it is live."""
        self._pubsub_runs += 1
        if self.sharded is not None:
            sharded = asyncio.ensure_future(self.sharded.run(
                lambda message: self.router.dispatch(message, self.handle_payload), self.sharded_gap))
            try:
                await self._plain_pubsub()
            finally:
                sharded.cancel()
                await asyncio.gather(sharded, return_exceptions=True)
            return
        await self._plain_pubsub()

    async def _plain_pubsub(self) -> None:
        if self._pubsub_runs == 1:
            await self.router.run(self.handle_payload, self.resync)
            return
        self.router.subscribed.clear()

        async def catch_up() -> None:
            await self.router.subscribed.wait()
            await self.resync()

        catching_up = asyncio.ensure_future(catch_up())
        try:
            await self.router.run(self.handle_payload, self.resync)
        finally:
            catching_up.cancel()

    async def refresh_loop(self) -> None:
        """Keep this node alive in Redis (one script call, whatever its session count) and watch Redis health.

        A refresh starts every period whether or not the previous one has answered (up to as many as fit in the
        session expiry): slow replies from Redis must not stretch the period past the expiry, or the node's
        presence lapses while its sessions are open."""
        in_flight: set[asyncio.Task[None]] = set()
        limit = max(1, int(self.settings.session_ttl_s / self.settings.session_refresh_s))
        try:
            while True:
                if len(in_flight) < limit:
                    task = asyncio.get_running_loop().create_task(self._refresh_once())
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                await asyncio.sleep(self.settings.session_refresh_s if self.redis_ok else 0.5)
        finally:
            for task in in_flight:
                task.cancel()

    async def _refresh_once(self) -> None:
        try:
            await self.refresh_registry()
            self.redis_ok = True
        except (RedisError, OSError) as exc:
            if self.redis_ok:
                log.warning("redis refresh failed: %s", exc)
            metrics.REDIS_ERRORS.labels("refresh").inc()
            self.redis_ok = False

    def routable(self, index: int) -> bool:
        """Whether pushes for users of shard `index` reach this node's sessions: that shard's subscription is live
        and the node's presence there is confirmed."""
        return self.router.live(index) and self.registry.alive_on(index)

    def check_routing(self, now: float) -> int:
        """Close with 1013 the sessions of users on shards this node has been unable to route for longer than the
        grace period (only those: users on other shards are served); the number closed."""
        expired: set[int] = set()
        for index in range(self.shards.count):
            if self.draining or self.routable(index):
                self.unroutable_since[index] = None
                continue
            since = self.unroutable_since[index]
            if since is None:
                self.unroutable_since[index] = now
            elif now - since >= self.settings.route_grace_s:
                expired.add(index)
        if not expired:
            return 0
        closing = [s for s in self.sessions if not s.closed
                   and (self.shards.count == 1 or self.shards.index_of(s.user) in expired)]
        if closing:
            log.warning("unable to route (shards %s) for over %.1fs: closing %d sessions with %d", sorted(expired),
                        self.settings.route_grace_s, len(closing), CLOSE_TRY_AGAIN_LATER)
        for session in closing:
            session.close_soon(CLOSE_TRY_AGAIN_LATER, "node cannot deliver; reconnect")
        return len(closing)

    async def route_watch_loop(self) -> None:
        """Apply `check_routing` a few times a second."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_ROUTE_WATCH_S)
            self.check_routing(loop.time())

    async def healthy(self) -> tuple[bool, dict[str, Any]]:
        """(UP?, details) for /health, per shard: a shard serves when it answers and its subscription is live.

        With one Redis, UP means it serves (and the node registered its sessions again after a gap). With several
        shards the node stays UP while any shard serves: losing one shard costs only the users whose data lives
        there (their upgrades and pushes get 503), not a Consul check that takes every user's node away.
        Answers within half the Consul check's timeout (Redis is waited for that long), so during a silent partition
        Consul gets a 503, not a timeout."""
        timeout_s = self.settings.health_redis_timeout_s
        masters: list[tuple[Any, bool]] = []
        if self.cluster is not None:
            # One master down costs only the users of its slots: the node serves while any master answers.
            masters = await master_pings(self.cluster, timeout_s)
            pinged = [any(ok for _, ok in masters)]
        else:
            answers = await asyncio.gather(*(asyncio.wait_for(client.ping(), timeout_s)
                                             for client in self.shards.all), return_exceptions=True)
            pinged = [not isinstance(answer, BaseException) for answer in answers]
        if all(pinged) and not self.redis_ok and self._recovery is None:
            # First answer after a gap (Redis may have restarted empty): in the background, drop pooled
            # connections to the old server and register the sessions again; a lone Redis is DOWN until then.
            self._recovery = asyncio.get_running_loop().create_task(self._recover())
        live = [self.router.live(index) for index in range(self.shards.count)]
        serving = [ping and sub for ping, sub in zip(pinged, live, strict=True)]
        # On a cluster, a refresh fails while the master holding the node's liveness keys fails over; the node still
        # serves (its presence holds until the session TTL) the users of every other master.
        up = not self.draining and any(serving) and (self.shards.count > 1 or self.redis_ok
                                                     or (self.cluster is not None and self.registry.alive))
        up = up and (self.sharded is None or self.sharded.started)  # until then no user of some slots is served
        details = health_details(up=up, node_id=self.settings.node_id, pinged=pinged, live=live,
                                 redis_ok=self.redis_ok, sessions=len(self.sessions), draining=self.draining)
        if self.cluster is not None:
            details["cluster"] = await cluster_state(self.cluster, timeout_s, [node for node, ok in masters if ok])
            details["cluster"]["nodes"] = [{"node": f"{node.host}:{node.port}", "redis": "UP" if ok else "DOWN"}
                                           for node, ok in masters]
            if self.sharded is not None:
                details["cluster"]["unsubscribed_slots"] = self.sharded.unsubscribed()
        return up, details

    async def _recover(self) -> None:
        try:
            if self.cluster is None:  # RedisCluster reconnects on its own, following the slot map
                await gather_all([client.connection_pool.disconnect(inuse_connections=False)
                                  for client in self.shards.all])
            await self.refresh_registry(full=True)
            self.redis_ok = True
        except (RedisError, OSError) as exc:
            log.warning("redis recovery failed: %s", exc)
        finally:
            self._recovery = None

    async def close_all(self) -> None:
        """Drain: close every session with 1001 and remove them from Redis."""
        self.draining = True
        sessions = list(self.sessions)
        await asyncio.gather(*(s.close(CLOSE_GOING_AWAY, "server going away") for s in sessions),
                             return_exceptions=True)
        for s in sessions:
            self.sessions.remove(s)
        try:
            await self.registry.remove((s.id, s.user) for s in sessions)
            await self.registry.leave()
        except (RedisError, OSError) as exc:
            log.warning("could not remove sessions from redis on drain: %s", exc)

