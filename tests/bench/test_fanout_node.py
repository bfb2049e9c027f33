"""The Node.js socket.io system of bench.fanout, over real sockets: JWT on connect, a room per user, pushes through
POST /push carried to the other server by @socket.io/redis-adapter."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator

import pytest

from bench import fanout, fanout_node
from bench.fanout import FanoutClient, Stats
from bench.fanout_push import HttpStatusError, NodePusher
from harness import ManagedProcess, ProcessGroup, RedisInfo, free_port

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="Node.js 20 and npm are needed for the socket.io (Node) system")


@pytest.fixture
def servers(procs: ProcessGroup, redis_server: RedisInfo) -> tuple[list[ManagedProcess], list[int]]:
    ports = [free_port(), free_port()]
    started = fanout_node.start_servers(procs, ports, redis_url=redis_server.url,
                                        key=f"wsgate-test-sionode-{uuid.uuid4().hex[:8]}", jwt_secret=fanout.SECRET,
                                        api_key=fanout.API_KEY, tag="t")
    for proc, port in zip(started, ports, strict=True):
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health", timeout_s=30)
    return started, ports


async def connect(port: int, user: str, sink: Stats) -> FanoutClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: FanoutClient("socketio_node", fanout.path_for("socketio_node", user), f"127.0.0.1:{port}", user, sink),
        "127.0.0.1", port)
    try:
        await asyncio.wait_for(client.ready, 10)
    except BaseException:
        assert client.transport is not None
        client.transport.close()
        raise
    return client


@pytest.fixture
async def pusher(servers: tuple[list[ManagedProcess], list[int]]) -> AsyncIterator[NodePusher]:
    push = NodePusher(servers[1][0], fanout.API_KEY, in_flight=2, path="/push")
    await push.start()
    yield push
    push.close()


async def test_room_push_reaches_only_its_user_across_servers_and_a_broadcast_reaches_all(
        servers: tuple[list[ManagedProcess], list[int]], pusher: NodePusher) -> None:
    _, ports = servers
    sink_a, sink_b = Stats(), Stats()
    a = await connect(ports[0], "alice", sink_a)  # on the server that takes the pushes
    b = await connect(ports[1], "bob", sink_b)  # on the other one: only Redis carries the push there
    try:
        got_b = sink_b.expect(1)
        await pusher.push({"room": "bob", "event": "message", "data": {"i": 1}})
        await asyncio.wait_for(got_b, 10)
        # socket.io writes a local emit before /push answers: had alice been in bob's room, she would count 2 below.
        got_a, got_b = sink_a.expect(1), sink_b.expect(1)
        await pusher.push({"room": None, "event": "message", "data": {"n": 0}})
        await asyncio.wait_for(asyncio.gather(got_a, got_b), 10)
        assert (sink_a.deliveries, sink_b.deliveries, sink_a.lost, sink_b.lost) == (1, 1, 0, 0)
    finally:
        for client in (a, b):
            assert client.transport is not None
            client.transport.close()


async def test_a_token_signed_with_another_secret_is_refused(servers: tuple[list[ManagedProcess], list[int]],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "SECRET", "another-secret-0123456789abcdef0123456789")
    with pytest.raises(ConnectionError, match="unauthorized: invalid signature"):
        await connect(servers[1][0], "mallory", Stats())


async def test_push_without_the_api_key_is_refused_401(servers: tuple[list[ManagedProcess], list[int]]) -> None:
    push = NodePusher(servers[1][0], "wrong-key", in_flight=1, path="/push")
    await push.start()
    try:
        with pytest.raises(HttpStatusError, match="push answered 401"):
            await push.push({"room": None, "event": "message", "data": {}})
    finally:
        push.close()
