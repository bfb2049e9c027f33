"""RequestRateLimiter on both lanes: the native lane runs the token bucket script itself (gateway/_http_redis.c).

Each test runs against both lanes (conftest.py) and holds both to the same bytes and the same failure rules;
where the lane is the native one it must also be the one answering. Redis is a server of the test's own, so that
SCRIPT FLUSH, a stop and a SIGSTOP touch nobody else.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from gateway.model import RateLimit
from gateway.proxy.native_http import NativeHttp, _Refusal
from gateway.proxy.responses import rate_limit_refusal
from gateway.ratelimit.bucket import rate_limit_headers
from gateway.ratelimit.redis import RedisConnection, RedisRateLimiter, redis_connection
from harness import ManagedProcess, ProcessGroup, free_port, redis_answers, redis_server_binary
from tests.gateway.conftest import RunningGateway, StartGateway, StartUpstream, config, route

LIMIT = "RequestRateLimiter=1, 3, 3, header:X-Key"  # rate 1/s, burst 3, 3 a request: one passes, then 429s for 3 s
HEADERS = b"X-RateLimit-Replenish-Rate: 1\r\nX-RateLimit-Burst-Capacity: 3\r\nX-RateLimit-Requested-Tokens: 3\r\n"


@pytest.fixture
def own_redis(procs: ProcessGroup, tmp_path: Path) -> Iterator[tuple[str, ManagedProcess]]:
    """A redis-server of this test's own: (its URL, its process)."""
    port = free_port()
    proc = procs.start("redis", [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", str(tmp_path)])
    proc.wait_port_ready("127.0.0.1", port)
    deadline = time.monotonic() + 10
    while not redis_answers("127.0.0.1", port):
        assert time.monotonic() < deadline, proc.log()
        time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}/0", proc
    proc.signal(signal.SIGCONT)


@pytest.fixture
async def connections() -> AsyncIterator[list[RedisConnection]]:
    """The limiters' Redis connections, closed after the test."""
    opened: list[RedisConnection] = []
    yield opened
    for each in opened:
        await each.aclose()


async def limited_gateway(start_upstream: StartUpstream, start_gateway: StartGateway, url: str,
                          connections: list[RedisConnection], *, timeout_s: float = 1.0) -> RunningGateway:
    port = await start_upstream()
    connection = redis_connection(url)
    connections.append(connection)
    limiter = RedisRateLimiter(connection.client, key_prefix="t:", timeout_s=timeout_s)
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"], [LIMIT])),
                             rate_limiter=limiter)
    # The first limited request asks what the URL names (one server, a Cluster?), on the Python path: a
    # connection of its own, since a connection handed to Python stays there.
    assert (await ask(gw, b"/warm", b"warm"))[0].startswith(b"HTTP/1.1 200 ")
    return gw


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await reader.readexactly(length)


async def ask(gw: RunningGateway, path: bytes, key: bytes, count: int = 1) -> list[bytes]:
    """`count` GETs of `path` with X-Key `key` on one new connection; each whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        answers = []
        for _ in range(count):
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nX-Key: " + key + b"\r\n\r\n")
            answers.append(await asyncio.wait_for(read_answer(reader), 15))
        return answers
    finally:
        writer.close()


def lane_stats(gw: RunningGateway) -> dict[str, int] | None:
    lane: NativeHttp | None = gw.server.native_http
    return None if lane is None else lane.lane.stats()


def refusal(path: bytes) -> bytes:
    """The Python path's 429 for `path` with an empty bucket, written out here rather than taken from the code."""
    body = b'{"status": 429, "error": "Too Many Requests", "message": "rate limit exceeded", "path": "%s"}' % path
    return (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"X-RateLimit-Remaining: 0\r\n%s\r\n%s" % (len(body), HEADERS, body))


async def same_second() -> None:
    """Start when the wall clock's second has most of itself left: the bucket refills by whole seconds."""
    fraction = time.time() % 1
    if fraction > 0.7:
        await asyncio.sleep(1.0 - fraction + 0.01)  # aligning with the clock, not with the system under test


async def test_rate_limited_requests_pass_and_are_refused_with_the_same_bytes(
        start_upstream: StartUpstream, start_gateway: StartGateway, own_redis: tuple[str, ManagedProcess],
        connections: list[RedisConnection],
        http_lane: str) -> None:
    gw = await limited_gateway(start_upstream, start_gateway, own_redis[0], connections)
    await same_second()
    allowed, refused, again = await ask(gw, b"/a/b?q=1", b"k", 3)
    assert allowed.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nX-RateLimit-Remaining: 0\r\n" + HEADERS + b"\r\n" in allowed, allowed
    assert refused == refusal(b"/a/b")
    assert again == refused  # the connection stays after a refusal, as on the Python path
    assert (await ask(gw, b"/a/b", b"other"))[0].startswith(b"HTTP/1.1 200 ")  # a bucket per key
    assert gw.metrics.value("wsgate_requests_total", route="r", status="429") == 2
    stats = lane_stats(gw)
    if http_lane == "native":
        assert stats is not None and stats["limited"] == 4 and stats["handed_back"] == 1, stats


async def test_a_flushed_script_is_loaded_again(start_upstream: StartUpstream, start_gateway: StartGateway,
                                                own_redis: tuple[str, ManagedProcess],
        connections: list[RedisConnection], http_lane: str) -> None:
    gw = await limited_gateway(start_upstream, start_gateway, own_redis[0], connections)
    client = redis.asyncio.from_url(own_redis[0])
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    for key in (b"one", b"two"):  # NOSCRIPT: Python's EVAL loads it again; then the lane's EVALSHA finds it
        (answer,) = await ask(gw, b"/x", key)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nX-RateLimit-Remaining: 0\r\n" in answer, answer
    stats = lane_stats(gw)
    if http_lane == "native":
        assert stats is not None and stats["handed_back"] == 2 and stats["limited"] == 1, stats


async def test_redis_down_lets_requests_through_on_both_lanes(
        start_upstream: StartUpstream, start_gateway: StartGateway, own_redis: tuple[str, ManagedProcess],
        connections: list[RedisConnection]) -> None:
    gw = await limited_gateway(start_upstream, start_gateway, own_redis[0], connections)
    own_redis[1].stop()
    for key in (b"one", b"two"):  # fail open (SCG's default), -1 tokens left
        (answer,) = await ask(gw, b"/x", key)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nX-RateLimit-Remaining: -1\r\n" in answer, answer


async def test_redis_that_does_not_answer_times_out_as_on_the_python_path(
        start_upstream: StartUpstream, start_gateway: StartGateway, own_redis: tuple[str, ManagedProcess],
        connections: list[RedisConnection],
        http_lane: str) -> None:
    gw = await limited_gateway(start_upstream, start_gateway, own_redis[0], connections, timeout_s=0.3)
    own_redis[1].signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        (answer,) = await ask(gw, b"/x", b"one")
        waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nX-RateLimit-Remaining: -1\r\n" in answer, answer
        assert 0.25 < waited < 1.0, waited  # one timeout, not the lane's and then Python's
        (answer,) = await ask(gw, b"/x", b"two")  # within retry_interval_s: decided at once
        assert b"\r\nX-RateLimit-Remaining: -1\r\n" in answer, answer
    finally:
        own_redis[1].signal(signal.SIGCONT)
    if http_lane == "native":
        stats = lane_stats(gw)
        assert stats is not None and stats["handed_back"] >= 2, stats


async def test_pipelined_limited_requests_are_answered_in_order(
        start_upstream: StartUpstream, start_gateway: StartGateway, own_redis: tuple[str, ManagedProcess],
        connections: list[RedisConnection], http_lane: str) -> None:
    gw = await limited_gateway(start_upstream, start_gateway, own_redis[0], connections)
    await same_second()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"".join(b"GET /p HTTP/1.1\r\nHost: gw\r\nX-Key: " + key + b"\r\n\r\n"
                              for key in (b"a", b"b", b"a", b"c", b"b")))
        answers = [await asyncio.wait_for(read_answer(reader), 15) for _ in range(5)]
    finally:
        writer.close()
    assert [answer[9:12] for answer in answers] == [b"200", b"200", b"429", b"200", b"429"]
    assert all(b"\r\nX-RateLimit-Remaining: 0\r\n" + HEADERS in answer for answer in answers), answers
    stats = lane_stats(gw)
    if http_lane == "native":
        assert stats is not None and stats["limited"] == 5 and stats["handed_back"] == 1, stats


async def test_paths_of_their_own_share_the_bucket_and_each_refusal_names_its_path(
        start_upstream: StartUpstream, start_gateway: StartGateway, own_redis: tuple[str, ManagedProcess],
        connections: list[RedisConnection], http_lane: str) -> None:
    # Paths the lane has not seen take a decision derived from another path's (a shape, lane_shapes.py): the key
    # (here a header) is the same, so the bucket is; the refusal's body must still name the request's own path.
    port = await start_upstream()
    connection = redis_connection(own_redis[0])
    connections.append(connection)
    limiter = RedisRateLimiter(connection.client, key_prefix="t:")
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/api/**"],
                                          ["StripPrefix=1", LIMIT])), rate_limiter=limiter)
    assert (await ask(gw, b"/api/warm", b"warm"))[0].startswith(b"HTTP/1.1 200 ")
    await same_second()
    answers = [await ask(gw, b"/api/" + item, b"k") for item in (b"a", b"b", b"c/d")]
    assert answers[0][0].startswith(b"HTTP/1.1 200 ")
    for (answer,), path in zip(answers[1:], (b"/api/b", b"/api/c/d"), strict=True):
        assert answer == refusal(path)
    if http_lane == "native":
        lane = gw.server.native_http
        assert lane is not None and lane.shaped == 2 and lane.lane.stats()["limited"] == 3, lane.lane.stats()


@pytest.mark.parametrize("keep_alive", [True, False])
def test_a_shapes_refusal_template_renders_what_the_python_path_answers(keep_alive: bool) -> None:
    limit = RateLimit(replenish_rate=1, burst_capacity=3, requested_tokens=3, key="header:X-Key")
    template = _Refusal(*NativeHttp._refusal(limit, _Refusal.MARK, keep_alive))
    for path in ("/api/x", "/api/item/1234567890/y"):
        head, tail = template.render(path.encode())
        headers = rate_limit_headers(limit, 0)
        assert head + b"X-RateLimit-Remaining: 0\r\n" + tail == rate_limit_refusal(429, path, headers,
                                                                                   close=not keep_alive)
