"""The lean pub/sub connection against real redis-server processes: confirmations, messages handed on in order as
they are parsed, held messages, and every way a subscription ends."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from harness import ManagedProcess, ProcessGroup, free_port, redis_server_binary
from tests.wsnode.conftest import eventually
from wsnode.redis_lane import LaneTarget
from wsnode.subscriber import subscribe


@pytest.fixture
async def server(procs: ProcessGroup) -> tuple[ManagedProcess, int]:
    port = free_port()
    proc = procs.start("redis", [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--requirepass", "sesame"])
    await asyncio.to_thread(proc.wait_port_ready, "127.0.0.1", port)
    return proc, port


@pytest.fixture
async def publisher(server: tuple[ManagedProcess, int]) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(port=server[1], password="sesame")
    yield client
    await client.aclose()


async def _now(value: bool) -> bool:
    return value


def target(port: int, *, password: str = "sesame") -> LaneTarget:
    return LaneTarget(port=port, setup=(("AUTH", password), ("CLIENT", "SETNAME", "wsnode-sub-test")),
                      read_timeout_s=5.0, connect_timeout_s=1.0)


async def test_subscriber_hands_on_each_message_in_order(server: tuple[ManagedProcess, int],
                                                          publisher: aioredis.Redis) -> None:
    got: list[tuple[bytes, bytes]] = []
    subscription = await subscribe(target(server[1]), ["a", "b"], lambda ch, data: got.append((ch, data)),
                                   timeout_s=2.0)
    try:
        for i in range(200):
            assert await publisher.publish("a" if i % 2 else "b", f"m{i}") == 1  # confirmed: Redis counts it
        assert await publisher.publish("c", "not subscribed") == 0
        await eventually(lambda: _now(len(got) == 200))
        assert got == [(b"a" if i % 2 else b"b", f"m{i}".encode()) for i in range(200)]
        (name,) = [c["name"] for c in await publisher.client_list(_type="pubsub")]
        assert name == "wsnode-sub-test"
    finally:
        subscription.close()
        assert await subscription.ended is None


async def test_subscriber_holds_messages_until_released(server: tuple[ManagedProcess, int],
                                                        publisher: aioredis.Redis) -> None:
    got: list[bytes] = []
    subscription = await subscribe(target(server[1]), ["a"], lambda ch, data: got.append(data), timeout_s=2.0,
                                   hold=True)
    try:
        for i in range(5):
            await publisher.publish("a", f"m{i}")
        await publisher.publish("a", "last")
        await eventually(lambda: _now(subscription.held == 6))
        assert got == []
        subscription.release()
        assert got == [b"m0", b"m1", b"m2", b"m3", b"m4", b"last"]
        await publisher.publish("a", "after")
        await eventually(lambda: _now(len(got) == 7))
        assert got[-1] == b"after"
    finally:
        subscription.close()


async def test_subscriber_killed_connection_ends_with_a_connection_error(server: tuple[ManagedProcess, int],
                                                                        publisher: aioredis.Redis) -> None:
    subscription = await subscribe(target(server[1]), ["a"], lambda ch, data: None, timeout_s=2.0)
    assert await publisher.client_kill_filter(_type="pubsub") == 1
    with pytest.raises(RedisConnectionError, match="closed by server"):
        await subscription.ended


async def test_subscriber_stalled_server_times_out_the_subscribe(server: tuple[ManagedProcess, int]) -> None:
    proc, port = server
    proc.signal(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await subscribe(target(port), ["a"], lambda ch, data: None, timeout_s=0.3)
    finally:
        proc.signal(signal.SIGCONT)


async def test_subscriber_refused_setup_and_refused_connect_raise_redis_errors(
        server: tuple[ManagedProcess, int]) -> None:
    with pytest.raises(AuthenticationError):
        await subscribe(target(server[1], password="wrong"), ["a"], lambda ch, data: None, timeout_s=2.0)
    with pytest.raises(RedisConnectionError, match="connecting to"):
        await subscribe(target(free_port()), ["a"], lambda ch, data: None, timeout_s=2.0)


async def test_subscriber_server_gone_ends_the_subscription(server: tuple[ManagedProcess, int]) -> None:
    proc, port = server
    subscription = await subscribe(target(port), ["a"], lambda ch, data: None, timeout_s=2.0)
    proc.kill()
    with pytest.raises(RedisConnectionError):
        await subscription.ended
