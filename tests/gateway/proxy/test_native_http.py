"""The native HTTP lane itself: which requests it carries, what it hands back, its pool and its decision cache.

The behaviour every client sees is checked by the other proxy tests, which run against both lanes; these check
that the native lane is really the one answering where it should.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.proxy.native_http import NativeHttp
from tests.gateway.conftest import RunningGateway, StartGateway, StartUpstream, config, route
from tests.gateway.framing import read_answers


@pytest.fixture
def http_lane() -> str:
    """Only the native lane here."""
    return "native"


def lane_of(gw: RunningGateway) -> NativeHttp:
    assert gw.server.native_http is not None, "the native lane did not start"
    return gw.server.native_http


async def exchange(gw: RunningGateway, requests: bytes, count: int) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(requests)
        return [answer.status for answer in await read_answers(reader, count=count)]
    finally:
        writer.close()


async def test_native_lane_carries_keep_alive_requests_on_one_pooled_connection(
        start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/svc/**"], ["StripPrefix=1"])))
    get = b"GET /svc/a HTTP/1.1\r\nHost: gw\r\n\r\n"
    post = b"POST /svc/b HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
    assert await exchange(gw, get + post + get, 3) == [200, 200, 200]
    stats = lane_of(gw).lane.stats()
    assert stats["requests"] == 3 and stats["handed_back"] == 0, stats
    assert stats["pooled"] == 1, stats  # one instance connection served all three
    assert gw.metrics.value("wsgate_requests_total", route="svc", status="200") == 3


async def test_native_lane_caches_a_decision_per_head_and_address(start_upstream: StartUpstream,
                                                                  start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    get = b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n"
    # Another Host, not another path: a path of its own under the same head would be served by a shape
    # (test_native_shapes.py), not cached.
    assert await exchange(gw, get * 3 + b"GET /x HTTP/1.1\r\nHost: gw2\r\n\r\n", 4) == [200] * 4
    assert len(lane_of(gw)._cache) == 2


async def test_native_lane_hands_back_what_python_answers(start_upstream: StartUpstream,
                                                          start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/svc/**"], ["StripPrefix=1"])))
    # A chunked response (the upstream's /stream) goes back with both connections; Python relays it and keeps
    # serving the client connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /svc/stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15.0)
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
        body = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 15.0)
        assert b"AAAAAAAAAA" in body
        writer.write(b"GET /nothing HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert [a.status for a in await read_answers(reader, count=1)] == [404]
    finally:
        writer.close()
    stats = lane_of(gw).lane.stats()
    assert stats["requests"] == 0 and stats["handed_back"] == 1, stats
