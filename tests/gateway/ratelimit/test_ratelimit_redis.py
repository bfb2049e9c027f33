"""RedisRateLimiter against a real Redis: SCG's token bucket, shared atomically by two limiters, and outages."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio

from gateway.model import RateLimit, RequestView
from gateway.ratelimit.bucket import RateDecision
from gateway.ratelimit.redis import DetectedRedis, RedisRateLimiter, redis_connection
from harness import ManagedProcess, ProcessGroup, RedisInfo, free_port, redis_answers, redis_server_binary

ALICE = RequestView("GET", "/", headers=(("X-User", "alice"),), remote_addr="10.0.0.1")
BOB = RequestView("GET", "/", headers=(("X-User", "bob"),), remote_addr="10.0.0.2")
NOBODY = RequestView("GET", "/", remote_addr="10.0.0.3")
T0 = 1_700_000_000


class Clock:
    """A settable clock in epoch seconds: the script's `now`."""

    def __init__(self, now_s: float = T0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def client(redis_server: RedisInfo) -> AsyncIterator[redis.asyncio.Redis]:
    conn = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    yield conn
    await conn.aclose()


@pytest.fixture
def make_limiter(client: redis.asyncio.Redis, redis_prefix: str) -> Callable[..., RedisRateLimiter]:
    def make(clock: Clock, **kwargs: object) -> RedisRateLimiter:
        return RedisRateLimiter(client, key_prefix=redis_prefix, clock=clock, **kwargs)  # type: ignore[arg-type]
    return make


def remaining(decision: RateDecision) -> int:
    return int(dict(decision.headers)["X-RateLimit-Remaining"])


async def run_checks(limiter: RedisRateLimiter, limit: RateLimit, count: int,
                     req: RequestView = ALICE) -> list[tuple[int, int]]:
    out = []
    for _ in range(count):
        decision = await limiter.check("api", limit, req)
        out.append((decision.status, remaining(decision)))
    return out


async def test_redis_rate_limiter_burst_then_429_with_scg_headers(
        make_limiter: Callable[..., RedisRateLimiter]) -> None:
    limiter = make_limiter(Clock())
    limit = RateLimit(1, 3, key="header:X-User")
    assert await run_checks(limiter, limit, 5) == [(200, 2), (200, 1), (200, 0), (429, 0), (429, 0)]
    denied = await limiter.check("api", limit, ALICE)
    assert denied == RateDecision(False, 429, (
        ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Replenish-Rate", "1"),
        ("X-RateLimit-Burst-Capacity", "3"), ("X-RateLimit-Requested-Tokens", "1")))


async def test_redis_rate_limiter_replenishes_with_the_clock_up_to_capacity(
        make_limiter: Callable[..., RedisRateLimiter]) -> None:
    clock = Clock()
    limiter = make_limiter(clock)
    limit = RateLimit(2, 4, key="header:X-User")
    assert await run_checks(limiter, limit, 5) == [(200, 3), (200, 2), (200, 1), (200, 0), (429, 0)]
    clock.now_s += 0.9  # whole seconds only, as SCG: nothing refilled yet
    assert await run_checks(limiter, limit, 1) == [(429, 0)]
    clock.now_s += 0.1
    assert await run_checks(limiter, limit, 3) == [(200, 1), (200, 0), (429, 0)]
    clock.now_s += 60
    assert await run_checks(limiter, limit, 1) == [(200, 3)]


async def test_redis_rate_limiter_requested_tokens_above_one(make_limiter: Callable[..., RedisRateLimiter]) -> None:
    clock = Clock()
    limiter = make_limiter(clock)
    limit = RateLimit(1, 5, requested_tokens=2, key="header:X-User")
    assert await run_checks(limiter, limit, 3) == [(200, 3), (200, 1), (429, 1)]
    clock.now_s += 1
    assert await run_checks(limiter, limit, 2) == [(200, 0), (429, 0)]


async def test_redis_rate_limiter_zero_burst_capacity_blocks_everything(
        make_limiter: Callable[..., RedisRateLimiter]) -> None:
    limiter = make_limiter(Clock())
    assert await run_checks(limiter, RateLimit(1, 0, key="header:X-User"), 2) == [(429, 0), (429, 0)]


async def test_redis_rate_limiter_buckets_per_caller_and_route(make_limiter: Callable[..., RedisRateLimiter]) -> None:
    limiter = make_limiter(Clock())
    limit = RateLimit(1, 1, key="header:X-User")
    assert (await limiter.check("api", limit, ALICE)).allowed
    assert not (await limiter.check("api", limit, ALICE)).allowed
    assert (await limiter.check("api", limit, BOB)).allowed
    assert (await limiter.check("other", limit, ALICE)).allowed


async def test_redis_rate_limiter_stores_scg_keys_with_ttl(client: redis.asyncio.Redis, redis_prefix: str,
                                                          make_limiter: Callable[..., RedisRateLimiter]) -> None:
    limiter = make_limiter(Clock())
    await limiter.check("api", RateLimit(2, 5, key="client"), ALICE)
    base = f"{redis_prefix}request_rate_limiter.{{api.10.0.0.1}}."
    assert await client.get(base + "tokens") == b"4"
    assert await client.get(base + "timestamp") == str(T0).encode()
    for suffix in ("tokens", "timestamp"):
        assert 4 <= await client.ttl(base + suffix) <= 5  # floor(5 / 2 * 2)


async def test_redis_rate_limiter_empty_key_is_403_without_redis(redis_prefix: str) -> None:
    # Nothing listens there: an empty key must be decided without asking Redis.
    dead = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        limiter = RedisRateLimiter(dead, key_prefix=redis_prefix)
        assert await limiter.check("api", RateLimit(1, 1, key="header:X-User"), NOBODY) == RateDecision(False, 403)
        unmetered = RateLimit(1, 1, key="header:X-User", deny_empty_key=False)
        assert await limiter.check("api", unmetered, NOBODY) == RateDecision(True, 200)
    finally:
        await dead.aclose()


async def test_redis_rate_limiter_two_limiters_share_the_bucket_atomically(
        redis_server: RedisInfo, redis_prefix: str) -> None:
    capacity, per_client = 10, 15
    clients = [redis.asyncio.Redis(host=redis_server.host, port=redis_server.port) for _ in range(2)]
    try:
        # Two limiters with their own connections, as in two gateway processes; the clock does not move.
        limiters = [RedisRateLimiter(conn, key_prefix=redis_prefix, clock=Clock()) for conn in clients]
        limit = RateLimit(1, capacity, key="header:X-User")
        checks = [limiter.check("api", limit, ALICE) for limiter in limiters for _ in range(per_client)]
        decisions = await asyncio.gather(*checks)
        assert sum(d.allowed for d in decisions) == capacity
        assert sorted(remaining(d) for d in decisions if d.allowed) == list(range(capacity))
        assert {d.status for d in decisions if not d.allowed} == {429}
    finally:
        for conn in clients:
            await conn.aclose()


@pytest.mark.parametrize(("fail_open", "allowed", "status"), [(True, True, 200), (False, False, 503)])
async def test_redis_rate_limiter_unreachable_redis_fails_open_or_closed(
        caplog: pytest.LogCaptureFixture, fail_open: bool, allowed: bool, status: int) -> None:
    dead = redis.asyncio.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        limiter = RedisRateLimiter(dead, fail_open=fail_open, timeout_s=0.5, retry_interval_s=60)
        limit = RateLimit(1, 1, key="client")
        with caplog.at_level(logging.DEBUG, logger="gateway.ratelimit_redis"):
            decisions = [await limiter.check("api", limit, ALICE)]
            started = time.monotonic()
            # Within retry_interval_s the outage is known: decided at once, without waiting on Redis again.
            decisions += [await limiter.check("api", limit, ALICE) for _ in range(20)]
            assert time.monotonic() - started < 0.5
        assert {(d.allowed, d.status, remaining(d)) for d in decisions} == {(allowed, status, -1)}
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "Redis unavailable" in errors[0].getMessage()
    finally:
        await dead.aclose()


async def test_redis_rate_limiter_hung_redis_times_out(redis_prefix: str) -> None:
    # A listener that accepts and never answers: the check must not hang past timeout_s.
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = redis.asyncio.Redis(host="127.0.0.1", port=port)
    try:
        limiter = RedisRateLimiter(conn, key_prefix=redis_prefix, timeout_s=0.3, fail_open=False)
        started = time.monotonic()
        decision = await limiter.check("api", RateLimit(1, 1), ALICE)
        assert decision.status == 503
        assert time.monotonic() - started < 2
    finally:
        await conn.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


def start_private_redis(procs: ProcessGroup, tmp_path: Path, port: int, name: str) -> ManagedProcess:
    binary = redis_server_binary()
    proc = procs.start(name, [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no", "--dir", str(tmp_path)])
    deadline = time.monotonic() + 10
    while not redis_answers("127.0.0.1", port):
        assert proc.alive() and time.monotonic() < deadline, proc.log()
        time.sleep(0.02)
    return proc


async def test_redis_rate_limiter_reloads_script_after_noscript_and_recovers_after_restart(
        procs: ProcessGroup, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A private server: SCRIPT FLUSH and a restart must not disturb other tests sharing the machine's Redis.
    port = free_port()
    server = start_private_redis(procs, tmp_path, port, "redis-a")
    conn = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        limiter = RedisRateLimiter(conn, clock=Clock(), timeout_s=0.5, retry_interval_s=0)
        limit = RateLimit(1, 5, key="header:X-User")
        assert remaining(await limiter.check("api", limit, ALICE)) == 4
        await conn.script_flush()
        assert remaining(await limiter.check("api", limit, ALICE)) == 3  # EVALSHA -> NOSCRIPT -> EVAL
        assert remaining(await limiter.check("api", limit, ALICE)) == 2  # cached again by EVAL
        server.stop()
        with caplog.at_level(logging.INFO, logger="gateway.ratelimit_redis"):
            assert (await limiter.check("api", limit, ALICE)).headers[0] == ("X-RateLimit-Remaining", "-1")
            start_private_redis(procs, tmp_path, port, "redis-b")  # empty: the script and bucket are gone
            assert remaining(await limiter.check("api", limit, ALICE)) == 4
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING][-1] == \
            "rate limiter: Redis answers again"
    finally:
        await conn.aclose()


async def test_redis_rate_limiter_on_a_list_of_servers_shards_buckets_by_slot(
        procs: ProcessGroup, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    for index, port in enumerate(ports):
        (tmp_path / str(index)).mkdir()
        start_private_redis(procs, tmp_path / str(index), port, f"redis-{index}")
    connection = redis_connection(",".join(f"redis://127.0.0.1:{port}/0" for port in ports))
    try:
        limiter = RedisRateLimiter(connection.client, clock=Clock(), fail_open=False)
        limit = RateLimit(1, 3, key="header:X-User")
        users = [RequestView("GET", "/", headers=(("X-User", f"u{index}"),)) for index in range(40)]
        for user in users:
            assert [(await limiter.check("api", limit, user)).allowed for _ in range(4)] == [True] * 3 + [False]
        assert isinstance(connection.client, DetectedRedis) and connection.client.mode == "shards"
        counts = []
        for port in ports:
            plain = redis.asyncio.Redis(host="127.0.0.1", port=port)
            keys = [key async for key in plain.scan_iter(match="request_rate_limiter.*")]
            counts.append(len(keys))
            await plain.aclose()
        # Both keys of a bucket on one server, and every server holds some buckets.
        assert sum(counts) == 2 * len(users) and all(count > 0 and count % 2 == 0 for count in counts), counts
    finally:
        await connection.aclose()


async def test_redis_rate_limiter_single_url_is_one_server(redis_server: RedisInfo, redis_prefix: str) -> None:
    connection = redis_connection(redis_server.url)
    try:
        limiter = RedisRateLimiter(connection.client, key_prefix=redis_prefix, clock=Clock(), fail_open=False)
        assert (await limiter.check("api", RateLimit(1, 1, key="header:X-User"), ALICE)).allowed
        assert isinstance(connection.client, DetectedRedis) and connection.client.mode == "single"
    finally:
        await connection.aclose()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0,127.0.0.1:2", "redis://a:1,redis+sentinel://s:26379/m", " , "])
def test_redis_connection_refuses_a_list_item_that_is_no_url(url: str) -> None:
    with pytest.raises(ValueError, match="Redis URL"):
        redis_connection(url)
