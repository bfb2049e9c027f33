"""The push script's Redis lane against real redis-server processes: replies in order, errors as redis-py's classes,
timeouts and lost connections failing what is in flight, reconnects, AUTH, SELECT and the client name."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from harness import ManagedProcess, ProcessGroup, free_port, redis_server_binary
from wsnode.redis_lane import LanedPool, RedisLane, encode


@dataclass
class OwnRedis:
    proc: ManagedProcess
    port: int
    start: Callable[[], ManagedProcess]


async def _until_answers(proc: ManagedProcess, port: int) -> None:
    await asyncio.to_thread(proc.wait_port_ready, "127.0.0.1", port)  # it asks for a password: no PING before AUTH


@pytest.fixture
async def own(procs: ProcessGroup, tmp_path: Path) -> OwnRedis:
    """A fresh redis-server on a free port that a test may stop, pause and start again (same port)."""
    port = free_port()
    argv = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--unixsocket", str(tmp_path / "redis.sock"), "--unixsocketperm", "700", "--requirepass", "sesame"]

    def start() -> ManagedProcess:
        return procs.start(f"redis-{len(procs.processes)}", argv)

    proc = start()
    await _until_answers(proc, port)
    return OwnRedis(proc, port, start)


@pytest.fixture
async def lane(own: OwnRedis) -> AsyncIterator[RedisLane]:
    made = RedisLane(port=own.port, password="sesame", socket_timeout=0.5, socket_connect_timeout=1.0,
                     client_name="wsnode-lane-test")
    yield made
    await made.aclose()


@pytest.mark.parametrize(("commands", "wire"), [
    ([("PING",)], b"*1\r\n$4\r\nPING\r\n"),
    ([("SET", "k", 12)], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"),
    ([("SET", "k", b"\r\n\x00")], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\n\r\n\x00\r\n"),
    ([("GET", "\u00e9")], b"*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"),  # UTF-8 length, not characters
    ([("INCRBY", "k", -3), ("GET", "k")],
     b"*3\r\n$6\r\nINCRBY\r\n$1\r\nk\r\n$2\r\n-3\r\n" b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
])
def test_redis_lane_encodes_commands_as_redis_py_does(commands: list[tuple[str | int | bytes, ...]],
                                                       wire: bytes) -> None:
    assert encode(commands) == wire
    assert encode(commands) == b"".join(aioredis.Connection().pack_commands(commands))


async def test_redis_lane_answers_every_reply_in_order_with_errors_as_objects(lane: RedisLane) -> None:
    replies = await lane.execute([("SET", "k", "v"), ("GET", "k"), ("INCR", "k"), ("EVALSHA", "0" * 40, 0),
                                  ("RPUSH", "l", 1, 2), ("LRANGE", "l", 0, -1), ("GET", "missing")])
    assert replies[:2] == [b"OK", b"v"]
    assert isinstance(replies[2], ResponseError) and "not an integer" in str(replies[2])
    assert isinstance(replies[3], NoScriptError)  # redis-py's class, so the batcher's NOSCRIPT rule applies
    assert replies[4:] == [2, [b"1", b"2"], None]


async def test_redis_lane_concurrent_batches_keep_their_own_replies(lane: RedisLane) -> None:
    results = await asyncio.gather(*(lane.execute([("INCR", f"n{i % 3}"), ("ECHO", f"batch {i}")])
                                     for i in range(300)))
    assert [echo for _, echo in results] == [f"batch {i}".encode() for i in range(300)]
    for k in range(3):  # each counter went 1..100, in the order the batches were written
        assert [n for i, (n, _) in enumerate(results) if i % 3 == k] == list(range(1, 101))


async def test_redis_lane_names_itself_and_selects_its_database(own: OwnRedis) -> None:
    lane = RedisLane(port=own.port, password="sesame", db=3, client_name="wsnode-lane-db3")
    try:
        assert await lane.execute([("SET", "where", "db3"), ("CLIENT", "GETNAME")]) == [b"OK", b"wsnode-lane-db3"]
    finally:
        await lane.aclose()
    check = aioredis.Redis(port=own.port, password="sesame", db=3)
    try:
        assert await check.get("where") == b"db3"
        assert await check.execute_command("SELECT", 0) and await check.get("where") is None
    finally:
        await check.aclose()


async def test_redis_lane_over_a_unix_socket(own: OwnRedis, tmp_path: Path) -> None:
    lane = RedisLane(path=str(tmp_path / "redis.sock"), password="sesame")
    try:
        assert await lane.execute([("PING",)]) == [b"PONG"]
    finally:
        await lane.aclose()


async def test_redis_lane_wrong_password_raises_redis_pys_error(own: OwnRedis) -> None:
    lane = RedisLane(port=own.port, password="wrong")
    try:
        with pytest.raises(AuthenticationError):
            await lane.execute([("PING",)])
        with pytest.raises(AuthenticationError):  # every attempt connects again, and fails again
            await lane.execute([("PING",)])
    finally:
        await lane.aclose()


async def test_redis_lane_refused_connect_is_a_connection_error() -> None:
    lane = RedisLane(port=free_port(), socket_connect_timeout=1.0)
    try:
        with pytest.raises(RedisConnectionError, match=r"connecting to 127\.0\.0\.1"):
            await lane.execute([("PING",)])
    finally:
        await lane.aclose()


async def test_redis_lane_stalled_server_times_out_everything_in_flight_then_reconnects(
        own: OwnRedis, lane: RedisLane) -> None:
    assert await lane.execute([("PING",)]) == [b"PONG"]
    own.proc.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(lane.execute([("INCR", "stalled")]) for _ in range(5)),
                                        return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        own.proc.signal(signal.SIGCONT)
    assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
    assert 0.5 <= elapsed < 3, elapsed  # the read timeout, once for all of them
    # The stalled connection was dropped (its late replies could be misread): a new one serves the next batch.
    assert await lane.execute([("CLIENT", "GETNAME")]) == [b"wsnode-lane-test"]


async def test_redis_lane_server_restart_fails_in_flight_then_reconnects(own: OwnRedis, lane: RedisLane) -> None:
    assert await lane.execute([("SET", "before", 1)]) == [b"OK"]
    own.proc.signal(signal.SIGSTOP)
    in_flight = asyncio.ensure_future(lane.execute([("GET", "before")]))
    own.proc.kill()
    with pytest.raises(RedisConnectionError):
        await in_flight
    with pytest.raises(RedisConnectionError):  # nothing listens: a clear error, not a hang
        await lane.execute([("PING",)])
    restarted = own.start()
    await _until_answers(restarted, own.port)
    assert await lane.execute([("GET", "before"), ("PING",)]) == [None, b"PONG"]  # a new, empty server


async def test_redis_lane_closed_lane_refuses_and_fails_in_flight(own: OwnRedis, lane: RedisLane) -> None:
    assert await lane.execute([("PING",)]) == [b"PONG"]
    own.proc.signal(signal.SIGSTOP)
    try:
        in_flight = asyncio.ensure_future(lane.execute([("PING",)]))
        await asyncio.sleep(0)  # written
        await lane.aclose()
        with pytest.raises(RedisConnectionError):
            await in_flight
    finally:
        own.proc.signal(signal.SIGCONT)
    with pytest.raises(RedisConnectionError, match="closed"):
        await lane.execute([("PING",)])


async def test_redis_lane_drop_takes_a_new_connection_and_spares_a_busy_one_when_asked(
        own: OwnRedis, lane: RedisLane) -> None:
    (first,) = await lane.execute([("CLIENT", "ID")])
    lane.drop(only_idle=True)  # idle: dropped
    (second,) = await lane.execute([("CLIENT", "ID")])
    assert second != first
    own.proc.signal(signal.SIGSTOP)
    try:
        in_flight = asyncio.ensure_future(lane.execute([("CLIENT", "ID")]))
        await asyncio.sleep(0)  # written, unanswered
        lane.drop(only_idle=True)  # busy: kept
        assert not in_flight.done()
        lane.drop()  # the pool's disconnect() with connections in use: what waits on it fails at once
        with pytest.raises(RedisConnectionError):
            await in_flight
    finally:
        own.proc.signal(signal.SIGCONT)
    (third,) = await lane.execute([("CLIENT", "ID")])
    assert third not in (first, second)


async def test_redis_lane_laned_pool_disconnect_drops_the_lane_too(own: OwnRedis) -> None:
    # As the node builds it (redis_connect.connect_shard): dropping the pool after a stalled subscription, or after
    # Redis came back, must not leave the push script on the old connection.
    pool = LanedPool.from_url(f"redis://:sesame@127.0.0.1:{own.port}/0", max_connections=4, timeout=1.0,
                              socket_timeout=5.0, client_name="laned")
    pool.lane = RedisLane.for_pool(pool)
    assert pool.lane is not None
    try:
        (first,) = await pool.lane.execute([("CLIENT", "ID")])
        await pool.disconnect()
        (second,) = await pool.lane.execute([("CLIENT", "ID")])
        assert second != first
        assert await pool.lane.execute([("CLIENT", "GETNAME")]) == [b"laned"]
    finally:
        await pool.lane.aclose()
        await pool.disconnect()


@pytest.mark.parametrize(("url", "where"), [
    ("redis://127.0.0.1:6390/0", "127.0.0.1:6390"),
    ("redis://:pw@localhost/2", "localhost:6379"),
    ("unix:///tmp/r.sock?db=1", "/tmp/r.sock"),
    ("rediss://127.0.0.1:6390/0", None),  # TLS keeps redis-py's connections
])
def test_redis_lane_for_pool_follows_the_pools_connections(url: str, where: str | None) -> None:
    made = RedisLane.for_pool(aioredis.ConnectionPool.from_url(url, socket_timeout=5.0, client_name="n"))
    assert (made and made.where) == where
