"""At-least-once delivery through the gateway: a node SIGKILLed mid-stream, replay racing live pushes (issue 5).

Everything is a real process: Redis, the dev Consul agent, two nodes registered in it and the gateway with the seed
route (`lb:ws://ws-service` + RewritePath). Clients and the producer only ever talk to the gateway.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from harness import ProcessGroup, RedisInfo
from tests.functional.conftest import Cluster, start_cluster

# Short session expiry: the SIGKILLed node's session records must be gone within the test.
FAST_NODE = ("--session-ttl", "2", "--session-refresh", "0.5", "--consul-check-interval", "1")
CLIENTS = 200  # one session per user: 200 distinct users
NUMBERS = 20  # numbers pushed to each user
KILL_AFTER = CLIENTS * NUMBERS // 3  # pushes acknowledged (202) before the SIGKILL
PRODUCER_CONCURRENCY = 24
RECONNECT_ATTEMPTS = 8
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
DEADLINE_S = 40.0


def token(cluster: Cluster, user: str) -> str:
    """An HS256 client token for `user`, signed with the cluster's secret."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, cluster.secret, algorithm="HS256")


def backoff_s(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter before reconnect `attempt` (1, 2, ...)."""
    return rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))


@dataclass
class Resuming:
    """A client that reconnects through the gateway with `since=<last id>` and drops duplicate ids."""

    user: str
    expect: int
    rng: random.Random
    ids: list[int] = field(default_factory=list)  # stored ids in delivery order, duplicates dropped
    seen: set[str] = field(default_factory=set)
    numbers: list[Any] = field(default_factory=list)  # `data` of those messages, same order
    number_ids: dict[Any, set[str]] = field(default_factory=dict)  # every id each number arrived under
    welcomes: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    reconnects: int = 0
    last_id: str | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    pong: asyncio.Event = field(default_factory=asyncio.Event)
    ws: aiohttp.ClientWebSocketResponse | None = None
    stop: bool = False

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            self.welcomes.append(frame)
            self.welcomed.set()
        elif kind == "pong":
            self.pong.set()
        elif kind == "message":
            ident = str(frame["id"])
            self.number_ids.setdefault(frame["data"], set()).add(ident)
            self.last_id = ident
            if ident in self.seen:
                self.duplicates += 1  # at least once: an id seen before is dropped
                return
            self.seen.add(ident)
            self.ids.append(int(ident))
            self.numbers.append(frame["data"])
            if len(self.numbers) >= self.expect:
                self.complete.set()

    async def run(self, http: aiohttp.ClientSession, url: str, bearer: str) -> None:
        """Connect, read until told to stop; on a closed socket reconnect with backoff, a bounded number of times."""
        failures = 0
        while not self.stop:
            params = {"token": bearer} | ({"since": self.last_id} if self.last_id is not None else {})
            try:
                async with http.ws_connect(url, params=params, heartbeat=None) as ws:
                    self.ws = ws
                    failures = 0
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self.on_frame(json.loads(msg.data))
            except (aiohttp.ClientError, OSError) as exc:
                if failures + 1 >= RECONNECT_ATTEMPTS:
                    raise AssertionError(f"{self.user}: no connection after {RECONNECT_ATTEMPTS} attempts") from exc
            finally:
                self.ws = None
            if self.stop:
                return
            failures += 1
            self.reconnects += 1
            await asyncio.sleep(backoff_s(failures, self.rng))  # backoff, not synchronisation

    def check(self) -> None:
        """Every number exactly once, in order, under strictly increasing ids; a duplicate only under its own id."""
        assert self.numbers == list(range(self.expect)), (self.user, self.numbers)
        assert all(a < b for a, b in zip(self.ids, self.ids[1:], strict=False)), (self.user, self.ids)
        assert all(len(ids) == 1 for ids in self.number_ids.values()), (self.user, self.number_ids)


async def wait_all(events: list[asyncio.Event], what: str, *, timeout_s: float = DEADLINE_S,
                   tasks: list[asyncio.Task[None]] | None = None) -> None:
    """Wait until every event is set; fail early with the error of a watched task (client, producer) that failed."""
    waiter: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(event.wait() for event in events)))
    watched: set[asyncio.Future[Any]] = {waiter, *(tasks or [])}
    deadline = time.monotonic() + timeout_s
    while waiter in watched:
        done, _ = await asyncio.wait(watched, timeout=max(0.0, deadline - time.monotonic()),
                                     return_when=asyncio.FIRST_COMPLETED)
        if not done:
            waiter.cancel()
            missing = sum(not event.is_set() for event in events)
            raise AssertionError(f"{missing} of {len(events)} not done within {timeout_s}s: {what}")
        for task in done - {waiter}:
            task.result()  # a failed client or producer fails the test with its own error
        watched -= done


class Producer:
    """Pushes numbers through the gateway's push API with an Idempotency-Key, retrying until 202."""

    def __init__(self, http: aiohttp.ClientSession, cluster: Cluster, tag: str) -> None:
        self.http = http
        self.url = f"{cluster.gateway_url}/ws-svc/api/v1/push"
        self.key = cluster.api_key
        self.tag = tag
        self.acked = 0
        self.retries = 0
        self.ids: dict[tuple[str, int], str] = {}
        self.milestones: list[tuple[int, asyncio.Event]] = []

    def when_acked(self, count: int) -> asyncio.Event:
        """An event set once `count` pushes were acknowledged."""
        event = asyncio.Event()
        self.milestones.append((count, event))
        if self.acked >= count:
            event.set()
        return event

    async def push(self, user: str, number: int) -> None:
        """One number to one user; a retry (after a 502 from a dying node) reuses the key, so no second id."""
        body = {"to": {"users": [user]}, "module": "seq", "event": "n", "data": number, "store": True}
        headers = {"Authorization": f"Bearer {self.key}", "Idempotency-Key": f"{self.tag}-{user}-{number}"}
        rng = random.Random(f"{user}-{number}")
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                async with self.http.post(self.url, json=body, headers=headers) as resp:
                    if resp.status == 202:
                        answer = await resp.json()
                        self.ids[(user, number)] = answer["ids"][user]
                        self.acked += 1
                        for count, event in self.milestones:
                            if self.acked >= count:
                                event.set()
                        return
                    status = f"{resp.status} {await resp.text()}"
            except (aiohttp.ClientError, OSError) as exc:
                status = repr(exc)
            self.retries += 1
            await asyncio.sleep(backoff_s(attempt, rng))
        raise AssertionError(f"push {number} to {user} not accepted after {RECONNECT_ATTEMPTS} attempts: {status}")

    async def sequence(self, user: str, count: int, limit: asyncio.Semaphore, *, start: int = 0) -> None:
        """Numbers start..start+count-1 to `user`, each after the previous one's 202 (so ids follow numbers)."""
        for number in range(start, start + count):
            async with limit:
                await self.push(user, number)


async def api_get(http: aiohttp.ClientSession, cluster: Cluster, path: str) -> dict[str, Any]:
    async with http.get(f"{cluster.gateway_url}/ws-svc/api/v1{path}",
                        headers={"Authorization": f"Bearer {cluster.api_key}"}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def eventually(check: Callable[[], Awaitable[bool]], what: str, *, timeout_s: float = 10.0) -> None:
    """Poll `check` until it holds (the node's session expiry has no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.1)


async def flush(clients: list[Resuming]) -> None:
    """A ping/pong round trip on every client: whatever the node sent before the pong has been read."""
    for client in clients:
        client.pong.clear()
        assert client.ws is not None, client.user
        await client.ws.send_str('{"type":"ping"}')
    await wait_all([client.pong for client in clients], "pong")


async def test_sigkill_of_a_node_mid_stream_loses_nothing_through_the_gateway(
        procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str, tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = start_cluster(procs, redis_server.url, redis_prefix, tmp_path, node_args=FAST_NODE)
    victim_name, survivor_name = "node-a", "node-b"
    ws_url = f"{cluster.gateway_url.replace('http', 'ws', 1)}/ws-svc/websocket"
    users = [f"fault{i:03d}" for i in range(CLIENTS)]
    clients = [Resuming(user, NUMBERS, random.Random(user)) for user in users]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as ws_http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=PRODUCER_CONCURRENCY)) as api_http:
        tasks = [asyncio.create_task(c.run(ws_http, ws_url, token(cluster, c.user))) for c in clients]
        try:
            await wait_all([c.welcomed for c in clients], "welcome", tasks=tasks)
            on_victim = [c for c in clients if c.welcomes[0]["node"] == victim_name]
            # Round-robin through the gateway spreads the sessions; the pushes below target the victim's users too.
            assert len(on_victim) >= CLIENTS // 4, {c.welcomes[0]["node"] for c in clients}
            presence = await asyncio.gather(*(api_get(api_http, cluster, f"/users/{c.user}/presence")
                                              for c in on_victim))
            assert all([s["node"] for s in p["sessions"]] == [victim_name] for p in presence), presence[:3]

            producer = Producer(api_http, cluster, redis_prefix)
            kill_now = producer.when_acked(KILL_AFTER)
            limit = asyncio.Semaphore(PRODUCER_CONCURRENCY)
            producing = [asyncio.create_task(producer.sequence(user, NUMBERS, limit)) for user in users]
            await wait_all([kill_now], "pushes before the kill", tasks=producing)
            cluster.nodes[victim_name].kill()
            acked_at_kill = producer.acked
            assert acked_at_kill < CLIENTS * NUMBERS  # the kill is mid-stream
            await wait_all([c.complete for c in clients], "every number", tasks=tasks + producing)
            await asyncio.gather(*producing)
            await flush(clients)  # nothing more (say a number under a second id) is on its way
            victims = {c.user for c in on_victim}

            async def cleaned() -> bool:
                # The dead node's session records expire: presence shows each user's one session, on the survivor.
                bodies = await asyncio.gather(*(api_get(api_http, cluster, f"/users/{u}/presence") for u in victims))
                return all([s["node"] for s in body["sessions"]] == [survivor_name] for body in bodies)

            await eventually(cleaned, "the SIGKILLed node's sessions leave presence")
            # Printed only: dials to the dead node the gateway moved on from before Consul's check failed.
            refused = next(p for p in procs.processes if p.name == "gateway").log().count("failed (refused)")
        finally:
            for client in clients:
                client.stop = True
            await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None), return_exceptions=True)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [r for r in results if r is not None] == []

        for client in clients:
            client.check()
            ids = [int(producer.ids[(client.user, n)]) for n in range(NUMBERS)]
            assert client.ids == ids, client.user  # the ids the 202s named, in order
        for client in clients:
            if client.user in victims:
                # The socket closed with the node; every reconnect went to the survivor and recovered.
                assert client.reconnects >= 1 and len(client.welcomes) >= 2, client.user
                assert all(w["node"] == survivor_name and w["recovered"] is True for w in client.welcomes[1:])
            else:
                assert client.reconnects == 0 and len(client.welcomes) == 1, client.user

    duplicates = sum(c.duplicates for c in clients)
    reconnects = sum(c.reconnects for c in clients)
    print(f"\nfault test: {len(clients)} clients, {len(users)} users (1 session each), {NUMBERS} numbers per user, "
          f"{len(victims)} users on the SIGKILLed node, killed after {acked_at_kill} of {CLIENTS * NUMBERS} pushes "
          f"acknowledged, {producer.retries} push retries, {duplicates} duplicates dropped, {reconnects} reconnects, "
          f"{refused} refused dials the gateway moved on from, "
          f"{time.monotonic() - started:.1f}s")


async def test_replay_racing_live_pushes_through_the_gateway_has_no_gap_reorder_or_duplicate(
        cluster: Cluster) -> None:
    total, stored_first = 150, 30
    user = "racer"
    ws_url = f"{cluster.gateway_url.replace('http', 'ws', 1)}/ws-svc/websocket"
    bearer = token(cluster, user)
    async with aiohttp.ClientSession() as http:
        producer = Producer(http, cluster, f"race-{cluster.redis_prefix}")
        await producer.sequence(user, stored_first, asyncio.Semaphore(1))
        # Two sessions at a time join at staggered points of the live stream (back to back, so round-robin puts
        # them on both nodes), each pair resuming from a different place: nothing (every unread message) or the id
        # of a number already stored.
        joins = [(producer.when_acked(stored_first + step), after) for step, after in
                 ((1, None), (20, 9), (45, None), (70, 0), (95, 24))]
        producing = asyncio.create_task(producer.sequence(user, total - stored_first, asyncio.Semaphore(1),
                                                          start=stored_first))
        clients: list[tuple[Resuming, int]] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for joined, after in joins:
                await wait_all([joined], "the join point", tasks=[producing])
                since = None if after is None else producer.ids[(user, after)]
                first = 0 if after is None else after + 1
                for _ in range(2):
                    client = Resuming(user, total - first, random.Random(len(clients)))
                    client.last_id = since
                    clients.append((client, first))
                    tasks.append(asyncio.create_task(client.run(http, ws_url, bearer)))
            await producing
            await wait_all([c.complete for c, _ in clients], "every message", tasks=tasks)
            await flush([c for c, _ in clients])
        finally:
            for client, _ in clients:
                client.stop = True
            await asyncio.gather(*(c.ws.close() for c, _ in clients if c.ws is not None), return_exceptions=True)
            results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r for r in results if r is not None] == []
    nodes = sorted(c.welcomes[0]["node"] for c, _ in clients)
    assert set(nodes) == {"node-a", "node-b"}  # the seam was crossed on both nodes
    for client, first in clients:
        assert client.numbers == list(range(first, total)), (first, client.numbers)
        assert client.ids == [int(producer.ids[(user, n)]) for n in range(first, total)], first
        assert client.ids == list(range(client.ids[0], client.ids[0] + total - first)), first  # no gap in ids
        assert client.duplicates == 0 and client.reconnects == 0
        assert client.welcomes[0].get("recovered") is (None if first == 0 else True)
    print(f"\nreplay race: {len(clients)} sessions through the gateway ({nodes.count('node-a')} on node-a), "
          f"{total} messages ({stored_first} stored before), joined in pairs after "
          f"{[stored_first + s for s in (1, 20, 45, 70, 95)]} acknowledged pushes, 0 duplicates, no gap or reorder")
