"""Redis outages under traffic: two real nodes on a Redis server of the test's own, stopped and started again.

The shared Redis (127.0.0.1:6379) is never touched: each test runs its own redis-server on a free port.
Anchors: python-socketio #143 (pub/sub dead after a Redis crash), Centrifugo #1189 (silent loss after a failover
while health stayed green).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from harness import ManagedProcess, ProcessGroup, free_port, redis_answers, redis_server_binary, unique_prefix
from tests.wsnode.conftest import API_KEY, FAST, SECRET, Client, NodeProc, api_get, eventually, make_token, push

# Without persistence a restarted Redis is empty; with an append-only file in the same directory it comes back whole.
EPHEMERAL = ("--save", "", "--appendonly", "no")
PERSISTENT = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


class OwnRedis:
    """A redis-server on a fixed free port that the test stops and starts again (same port, same directory)."""

    def __init__(self, procs: ProcessGroup, directory: Path, persistence: tuple[str, ...]) -> None:
        binary = redis_server_binary()
        self.procs = procs
        self.port = free_port()
        self.argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(directory), *persistence]
        self.proc: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.starts += 1
        self.proc = self.procs.start(f"redis-{self.starts}", self.argv)
        deadline = time.monotonic() + 10
        while not await asyncio.to_thread(redis_answers, "127.0.0.1", self.port):
            assert self.proc.alive(), self.proc.log()
            assert time.monotonic() < deadline, f"redis-server did not answer on {self.port}"
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """SIGTERM, as an orderly restart or a failover would (an append-only file is flushed)."""
        assert self.proc is not None
        await asyncio.to_thread(self.proc.stop)


async def start_shards(procs: ProcessGroup, tmp_path: Path, count: int) -> list[OwnRedis]:
    """`count` empty redis-servers without persistence, each in its own directory under `tmp_path`, answering."""
    servers = []
    for i in range(count):
        (tmp_path / f"r{i}").mkdir()
        server = OwnRedis(procs, tmp_path / f"r{i}", EPHEMERAL)
        await server.start()
        servers.append(server)
    return servers


def start_node_on(procs: ProcessGroup, name: str, redis_url: str, prefix: str, *extra: str) -> NodeProc:
    """A node on the given Redis (the wsnode suite's settings), once its /health is UP.

    These tests follow sessions that stay open through an outage, so the hand-over after `--route-grace` (closing
    them with 1013, tests/functional/test_fault_redis.py) is set beyond any outage here, however loaded the machine.
    `extra` flags come last (they win).
    """
    port = free_port()
    proc = procs.python(name, "wsnode", "--port", str(port), "--host", "127.0.0.1", "--node-id", name,
                        "--redis", redis_url, "--redis-prefix", prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
                        *FAST, "--route-grace", "60", *extra)
    proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
    return NodeProc(proc=proc, node_id=name, port=port)


async def _value(value: bool) -> bool:
    return value


async def _health(http: aiohttp.ClientSession, node: NodeProc) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{node.url}/health", headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        return resp.status, await resp.json()


async def _all_health(http: aiohttp.ClientSession, nodes: tuple[NodeProc, ...], status: int) -> bool:
    return all([(await _health(http, node))[0] == status for node in nodes])


async def _open(http: aiohttp.ClientSession, node: NodeProc, user: str, **params: str) -> tuple[Client, dict[str, Any]]:
    client = Client(await http.ws_connect(node.ws_url, params={"token": make_token(user), **params}))
    welcome = await client.next()
    assert welcome["type"] == "welcome", welcome
    return client, welcome


async def _messages_until(client: Client, data: Any, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Every message frame the client got, once the one carrying `data` has arrived."""
    while not any(f.get("type") == "message" and f["data"] == data for f in client.frames):
        await client.next_of("message", timeout_s=timeout_s)
    return [f for f in client.frames if f.get("type") == "message"]


async def test_redis_restarted_empty_during_traffic_nodes_recover_and_nothing_accepted_is_lost(
        procs: ProcessGroup, tmp_path: Path) -> None:
    redis = OwnRedis(procs, tmp_path, EPHEMERAL)
    await redis.start()
    prefix = unique_prefix("outage")
    a, b = (start_node_on(procs, name, redis.url, prefix) for name in ("node-a", "node-b"))
    async with aiohttp.ClientSession() as http:
        alice, _ = await _open(http, a, "alice")
        bob, _ = await _open(http, b, "bob")
        status, _ = await push(http, a, {"to": {"users": ["alice", "bob"]}, "module": "m", "data": "before"})
        assert status == 202
        before = [(await c.next_of("message"))["id"] for c in (alice, bob)]

        results: list[tuple[int, int]] = []  # (status, n) of each push during the outage
        stop = asyncio.Event()

        async def traffic() -> None:
            n = 0
            while not stop.is_set():
                status, _ = await push(http, (a, b)[n % 2], {"to": {"users": ["alice"]}, "module": "m", "data": n})
                results.append((status, n))
                n += 1
                await asyncio.sleep(0.01)  # pacing, not synchronisation

        task = asyncio.create_task(traffic())
        try:
            await eventually(lambda: _value(len(results) >= 5))
            await redis.stop()
            # Red while the subscription is down, and pushes are refused rather than accepted and dropped.
            await eventually(lambda: _all_health(http, (a, b), 503), timeout_s=10)
            for node in (a, b):
                _status, health = await _health(http, node)
                assert health["redis"] == "DOWN" and health["pubsub"] == "DOWN", health
            await eventually(lambda: _value(sum(s == 503 for s, _ in results) >= 4))
            await alice.send({"type": "ping"})
            assert await alice.next_of("pong")  # the session stays open through the outage
            await redis.start()
            await eventually(lambda: _all_health(http, (a, b), 200), timeout_s=10)
            # Green means the sessions are registered again: presence answers at once.
            for user, node in (("alice", a), ("bob", b)):
                _, presence = await api_get(http, a, f"/api/v1/users/{user}/presence")
                assert [s["node"] for s in presence["sessions"]] == [node.node_id], presence
            accepted_after = len([s for s, _ in results if s == 202])
            await eventually(lambda: _value(len([s for s, _ in results if s == 202]) > accepted_after + 4))
        finally:
            stop.set()
            await task
        assert {s for s, _ in results} == {202, 503}, results
        status, body = await push(http, b, {"to": {"users": ["alice", "bob"]}, "module": "m", "data": "after"})
        assert status == 202, body
        got = await _messages_until(alice, "after")
        accepted = [n for s, n in results if s == 202]
        assert [m["data"] for m in got] == ["before", *accepted, "after"]  # every 202 arrived, in order, once
        bob_got = await _messages_until(bob, "after")
        assert [m["data"] for m in bob_got] == ["before", "after"]
        # Ids never repeat, although Redis forgot the counters: a client dropping duplicate ids loses nothing.
        ids = [m["id"] for m in got]
        assert len(set(ids)) == len(ids) and int(bob_got[1]["id"]) > int(before[1]), (ids, before, bob_got)
        # The store restarted empty: bob's unread count holds only what came after the restart.
        status, unread = await api_get(http, a, "/api/v1/users/bob/unread")
        assert status == 200 and unread["unread"] == {"m": 1}, unread


async def test_redis_restarted_with_its_data_keeps_what_was_accepted(procs: ProcessGroup, tmp_path: Path) -> None:
    redis = OwnRedis(procs, tmp_path, PERSISTENT)
    await redis.start()
    prefix = unique_prefix("outage")
    a, b = (start_node_on(procs, name, redis.url, prefix) for name in ("node-a", "node-b"))
    async with aiohttp.ClientSession() as http:
        dave, _ = await _open(http, b, "dave")
        status, offline = await push(http, a, {"to": {"users": ["carol"]}, "module": "m", "data": "for later"})
        assert status == 202 and offline["online_sessions"] == 0
        status, _ = await push(http, a, {"to": {"users": ["dave"]}, "module": "m", "data": "first"})
        assert status == 202
        first = await dave.next_of("message")
        await redis.stop()
        await eventually(lambda: _all_health(http, (a, b), 503), timeout_s=10)
        status, body = await push(http, b, {"to": {"users": ["carol"]}, "module": "m", "data": "lost?"})
        assert status == 503 and "redis" in body["error"]
        await redis.start()
        await eventually(lambda: _all_health(http, (a, b), 200), timeout_s=10)
        status, presence = await api_get(http, a, "/api/v1/users/dave/presence")
        assert status == 200, presence
        assert [s["node"] for s in presence["sessions"]] == ["node-b"]
        carol, welcome = await _open(http, a, "carol")
        assert welcome["unread"] == {"m": 1}
        kept = await carol.next_of("message")
        assert (kept["id"], kept["data"]) == (offline["ids"]["carol"], "for later")
        status, _ = await push(http, a, {"to": {"users": ["dave"]}, "module": "m", "data": "second"})
        assert status == 202
        second = await dave.next_of("message")
        assert (second["data"], int(second["id"])) == ("second", int(first["id"]) + 1)
        await carol.send({"type": "ping"})
        assert await carol.next_of("pong")
        assert [f["data"] for f in carol.frames if f.get("type") == "message"] == ["for later"]  # not the 503'd one
