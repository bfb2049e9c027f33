"""Partial faults between a node and Redis (issue 14), made with the fault proxy (tests/faultproxy.py).

Two real nodes share Redis; node A reaches it only through the proxy. Users are connected to A with
`wsnode.client.Receiver`, which tries A then B (as the gateway would send them elsewhere) and reconnects with
`since=`, but here with `resume_on_gap=False`: these tests measure what the nodes do, without the client-side rule
that would hide a node's miss. A producer pushes to those users through node B's API during the fault; every push
answered 202 must reach its user (ids deduplicated) within a stated time after the fault ends. Each test prints its
figures: accepted, delivered live (on the connection open when the push was accepted), delivered on resume (after
a reconnect), lost, and the time from the end of the fault until the last one arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest

from harness import ManagedProcess, ProcessGroup, RedisInfo, free_port
from tests.faultproxy import PASS, STALL, FaultProxy, delay
from wsnode.client import Receiver

SECRET = "fault-test-secret-0123456789-abcdefgh"
API_KEY = "fault-key"
USERS = 12
PUSH_EVERY_S = 0.05
# Short expiries so that presence lapses within the test as it would over minutes in production.
NODE_ARGS = ("--session-ttl", "3", "--session-refresh", "1", "--heartbeat", "5", "--consul-check-interval", "1")


@dataclass
class Fleet:
    """Node A (through the proxy) and node B (direct) on one Redis."""

    proxy: FaultProxy
    a: str
    b: str
    procs: dict[str, ManagedProcess]


async def _start_node(procs: ProcessGroup, name: str, redis_url: str, prefix: str, *extra: str) -> tuple[
        str, ManagedProcess]:
    port = free_port()
    proc = procs.python(name, "wsnode", "--port", str(port), "--host", "127.0.0.1", "--node-id", name,
                        "--redis", redis_url, "--redis-prefix", prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
                        *NODE_ARGS, *extra)
    url = f"http://127.0.0.1:{port}"
    # Asynchronously: the proxy in front of A's Redis runs in this event loop.
    await proc.wait_http_ready_async(f"{url}/health", timeout_s=30)
    return url, proc


@contextlib.asynccontextmanager
async def fleet(procs: ProcessGroup, redis: RedisInfo, prefix: str, *a_args: str) -> AsyncIterator[Fleet]:
    """Start the proxy and both nodes; `a_args` are extra flags for node A."""
    async with FaultProxy(redis.host, redis.port) as proxy:
        a, proc_a = await _start_node(procs, "node-a", proxy.url, prefix, *a_args)
        b, proc_b = await _start_node(procs, "node-b", redis.url, prefix)
        yield Fleet(proxy=proxy, a=a, b=b, procs={"node-a": proc_a, "node-b": proc_b})
        proxy.heal()  # let node A stop cleanly


def _ws(url: str) -> str:
    return url.replace("http://", "ws://") + "/websocket"


@dataclass
class Run:
    """The users, their receivers, and every push accepted for them."""

    fleet: Fleet
    http: aiohttp.ClientSession
    receivers: dict[str, Receiver] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # id@user -> (time, connects of the user's receiver) when the push was accepted
    accepted: dict[str, tuple[float, int]] = field(default_factory=dict)
    delivered: dict[str, tuple[float, int]] = field(default_factory=dict)  # id@user -> (time, connects then)
    offline_answers: int = 0  # 202s saying no session was online: the user's presence had lapsed
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    fault_ended: float = 0.0

    async def connect_users(self) -> None:
        """Every user connected to node A (then B if A refuses)."""
        for index in range(USERS):
            user = f"fault-user-{index}"
            token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
            receiver = Receiver([_ws(self.fleet.a), _ws(self.fleet.b)], token=token,
                                on_message=lambda frame, u=user: self._on_message(u, frame), backoff_base_s=0.05,
                                backoff_max_s=1.0, session=self.http, resume_on_gap=False)
            self.receivers[user] = receiver
            self.tasks.append(asyncio.create_task(receiver.run()))
        await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in self.receivers.values())), 15)
        assert all(r.welcomes[0]["node"] == "node-a" for r in self.receivers.values())

    def _on_message(self, user: str, frame: dict[str, Any]) -> None:
        self.delivered.setdefault(f"{frame['id']}@{user}", (time.monotonic(), self.receivers[user].stats["connects"]))
        self.changed.set()

    async def produce(self, until: asyncio.Event) -> None:
        """Push to the users in turn through node B until `until` is set; keep what was answered 202."""
        index = 0
        while not until.is_set():
            user = f"fault-user-{index % USERS}"
            index += 1
            body = {"to": {"users": [user]}, "module": "m", "event": "e", "data": {"n": index}}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.post(f"{self.fleet.b}/api/v1/push", json=body,
                                          headers={"Authorization": f"Bearer {API_KEY}"},
                                          timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    if resp.status == 202:
                        answer = await resp.json()
                        self.offline_answers += answer["online_sessions"] == 0
                        self.accepted[f"{answer['ids'][user]}@{user}"] = (
                            time.monotonic(), self.receivers[user].stats["connects"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), PUSH_EVERY_S)

    async def all_delivered(self, within_s: float) -> None:
        """Wait until every accepted push was delivered; fail naming the missing ones after `within_s`."""
        deadline = time.monotonic() + within_s
        while not set(self.accepted) <= set(self.delivered):
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
            if time.monotonic() >= deadline and not set(self.accepted) <= set(self.delivered):
                missing = sorted(set(self.accepted) - set(self.delivered))
                raise AssertionError(f"{len(missing)} of {len(self.accepted)} accepted pushes not delivered "
                                     f"{within_s}s after the fault: {missing[:10]}; {self.figures()}")

    def figures(self) -> dict[str, Any]:
        """accepted / live / on resume / lost, and the time to recover."""
        live = sum(1 for key, (_, at) in self.accepted.items()
                   if key in self.delivered and self.delivered[key][1] == at)
        resumed = sum(1 for key in self.accepted if key in self.delivered) - live
        last = max((self.delivered[k][0] for k in self.accepted if k in self.delivered), default=self.fault_ended)
        latency = max((self.delivered[k][0] - at for k, (at, _) in self.accepted.items() if k in self.delivered),
                      default=0.0)
        return {"accepted": len(self.accepted), "delivered_live": live, "delivered_on_resume": resumed,
                "lost": len(set(self.accepted) - set(self.delivered)),
                "recovered_after_s": round(max(0.0, last - self.fault_ended), 2),
                "max_latency_s": round(latency, 2), "answered_offline": self.offline_answers,
                "reconnects": sum(r.stats["reconnects"] for r in self.receivers.values()),
                "gaps_seen_by_clients": sum(r.stats["gaps"] for r in self.receivers.values()),
                "close_codes": sorted({c for r in self.receivers.values() for c in r.close_codes if c})}

    async def stop(self) -> None:
        for receiver in self.receivers.values():
            await receiver.stop()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def run_with(f: Fleet) -> AsyncIterator[Run]:
    async with aiohttp.ClientSession() as http:
        run = Run(fleet=f, http=http)
        try:
            await run.connect_users()
            yield run
        finally:
            await run.stop()


async def _fault_window(run: Run, seconds: float, during: Any = None) -> None:
    """Push for `seconds` (the fault lasts that long), then stop pushing and mark the end of the fault."""
    stop = asyncio.Event()
    producer = asyncio.create_task(run.produce(stop))
    try:
        if during is not None:
            await during
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(producer), seconds)
    finally:
        stop.set()
        await producer
    run.fault_ended = time.monotonic()


async def test_slow_replies_from_redis_to_a_node_lose_nothing(procs: ProcessGroup, redis_server: RedisInfo,
                                                              redis_prefix: str) -> None:
    """Scenario 1: Redis's replies to node A are 2 s late for 12 s (ttl 3 s, refresh 1 s: a refresh that waited for
    the previous reply would let A's presence lapse). Every 202 arrives within 10 s of the end."""
    async with fleet(procs, redis_server, redis_prefix) as f, run_with(f) as run:
        f.proxy.set(down=delay(2.0))
        await _fault_window(run, 12.0)
        f.proxy.set(down=PASS)
        await run.all_delivered(within_s=10.0)
        print(f"\nscenario 1 (2 s delay Redis->A for 12 s): {run.figures()}")
        assert run.figures()["lost"] == 0
        # Presence never lapsed: every push found the user's open session (refreshes do not wait for replies), and
        # a delay below --pubsub-timeout is no stall: the sessions stayed where they were.
        assert run.offline_answers == 0
        assert run.figures()["reconnects"] == 0


async def test_node_cut_off_from_redis_hands_its_sessions_over(procs: ProcessGroup, redis_server: RedisInfo,
                                                               redis_prefix: str) -> None:
    """Scenario 2: node A silently cut off from Redis for 12 s (its connections stay open, nothing passes), then
    the link comes back for new connections only (the old ones stay stalled). A detects the stalled subscription,
    closes its sessions with 1013 after --route-grace (3 s), the clients resume on B; every 202 arrives within
    10 s of the end, and A serves again afterwards."""
    async with fleet(procs, redis_server, redis_prefix, "--route-grace", "3") as f, run_with(f) as run:
        f.proxy.set(up=STALL, down=STALL)
        await _fault_window(run, 12.0)
        f.proxy.set(up=PASS, down=PASS, existing=False)
        await run.all_delivered(within_s=10.0)
        figures = run.figures()
        print(f"\nscenario 2 (A cut off from Redis for 12 s, then back with the old connections stalled): {figures}")
        assert figures["lost"] == 0
        assert 1013 in figures["close_codes"]
        await f.procs["node-a"].wait_http_ready_async(f"{f.a}/health", timeout_s=15)  # A is UP again


async def test_stalled_subscription_after_a_short_cut_is_replaced_without_closing_sessions(
        procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str) -> None:
    """Scenario 2, short: A cut off for 4 s, then back for new connections only; with a long grace (20 s) the
    sessions stay on A. A must notice that its subscription stalled (nothing reset it), subscribe on a new connection
    and resend from the store: every 202 arrives within 15 s of the end, on the connections that were open."""
    async with fleet(procs, redis_server, redis_prefix, "--route-grace", "20") as f, run_with(f) as run:
        f.proxy.set(up=STALL, down=STALL)
        await _fault_window(run, 4.0)
        f.proxy.set(up=PASS, down=PASS, existing=False)
        stop = asyncio.Event()
        after = asyncio.create_task(run.produce(stop))  # pushes after the link is back must arrive too
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(after), 3.0)
        finally:
            stop.set()
            await after
        await run.all_delivered(within_s=15.0)
        figures = run.figures()
        print(f"\nscenario 2 short (4 s cut, old connections stay stalled): {figures}")
        assert figures["lost"] == 0
        assert figures["reconnects"] == 0, "sessions were to stay on A"
        async with run.http.get(f"{f.a}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
            stalls = re.search(r"^wsnode_pubsub_stalls_total (\S+)$", await resp.text(), re.MULTILINE)
        assert stalls is not None and float(stalls.group(1)) >= 1  # noticed by the heartbeat, nothing reset it


@pytest.mark.parametrize("check_timeout_s", [1.0])
async def test_health_answers_503_within_the_check_timeout_during_a_silent_partition(
        procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str, check_timeout_s: float) -> None:
    """Scenario 4: with A's link to Redis silently cut, /health answers 503 before Consul's check gives up."""
    async with fleet(procs, redis_server, redis_prefix) as f, aiohttp.ClientSession() as http:
        f.proxy.set(up=STALL, down=STALL)
        took: list[float] = []
        for _ in range(5):
            started = time.monotonic()
            async with http.get(f"{f.a}/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                took.append(time.monotonic() - started)
                assert resp.status == 503
        print(f"\nscenario 4: /health answered 503 in {[round(t, 3) for t in took]} s (check timeout "
              f"{check_timeout_s} s)")
        assert max(took) < check_timeout_s
