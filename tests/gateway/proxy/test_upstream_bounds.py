"""Exchanges with instances are bounded, and a pooled connection is never reused after any framing doubt.

The instance here is a scripted raw TCP server: each connection it accepts runs a script that reads requests and
answers (or does not) byte for byte. Issue 13 item 1 (pool), issue 14 item 3 (response timeout, keepalive).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.config.loader import load_config_text
from gateway.config.model import ServerSettings
from gateway.errors import ConfigError
from gateway.model import RouteMetadata
from gateway.routing.table import describe_routes
from gateway.routing.targets import RouteTarget
from tests.gateway.conftest import RunningGateway, StartGateway, config, route
from tests.gateway.framing import OK, Script, ScriptedUpstream, read_answers

MakeUpstream = Callable[[Script], ScriptedUpstream]


@pytest.fixture
async def scripted() -> AsyncIterator[MakeUpstream]:
    """Scripted upstreams, closed after the test."""
    made: list[ScriptedUpstream] = []

    def make(script: Script) -> ScriptedUpstream:
        made.append(ScriptedUpstream(script))
        return made[-1]

    yield make
    for upstream in made:
        await upstream.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request head (these tests send bodiless GETs)."""
    return await reader.readuntil(b"\r\n\r\n")


async def get(gw: RunningGateway, path: str = "/", *, timeout_s: float = 15.0) -> int | None:
    """One GET on a fresh client connection; its status (None when the connection closed without a whole answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        answers = await read_answers(reader, count=1, timeout_s=timeout_s)
        return answers[0].status if answers else None
    finally:
        writer.close()


async def gateway_to(start_gateway: StartGateway, upstream: ScriptedUpstream, *,
                     metadata: RouteMetadata | None = None, **server: object) -> RunningGateway:
    port = await upstream.start()
    return await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"], metadata=metadata),
                                      native_relay=False, **server))


def test_http_routes_have_a_response_timeout_by_default() -> None:
    assert ServerSettings().response_timeout_s == 30.0


ROUTES_WITH_OFF_TIMEOUTS = """\
spring:
  cloud:
    gateway:
      httpclient: {connect-timeout: 2000, response-timeout: -1}
routes:
  - id: off
    uri: http://127.0.0.1:9
    predicates: [Path=/off/**]
    metadata: {response-timeout: -1, connect-timeout: -1}
  - id: own
    uri: http://127.0.0.1:9
    predicates: [Path=/own/**]
    metadata: {response-timeout: 1500}
"""


def test_minus_one_turns_a_timeout_off_as_in_scg() -> None:
    cfg = load_config_text(ROUTES_WITH_OFF_TIMEOUTS)
    assert math.isinf(cfg.server.response_timeout_s or 0.0) and cfg.server.connect_timeout_s == 2.0
    off, own = cfg.routes
    assert math.isinf(off.metadata.response_timeout_s or 0.0) and math.isinf(off.metadata.connect_timeout_s or 0.0)
    assert (RouteTarget(off, cfg).response_timeout_s, RouteTarget(off, cfg).connect_timeout_s) == (None, None)
    assert RouteTarget(own, cfg).response_timeout_s == 1.5
    described = {r["route_id"]: r["metadata"] for r in describe_routes(cfg)}
    assert described["off"] == {"response-timeout": -1, "connect-timeout": -1}
    with pytest.raises(ConfigError):
        load_config_text(ROUTES_WITH_OFF_TIMEOUTS.replace("{response-timeout: 1500}", "{idle-timeout: -1}"))


async def test_silent_instance_on_a_reused_pooled_connection_gets_504_and_the_connection_dropped(
        start_gateway: StartGateway,
        scripted: MakeUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(OK)
        if index == 0:
            await read_request(reader)  # the second request, on the pooled connection: never answered

    upstream = scripted(script)
    gw = await gateway_to(start_gateway, upstream, metadata=RouteMetadata(response_timeout_s=0.5))
    assert await get(gw) == 200
    started = time.monotonic()
    assert await get(gw) == 504
    assert time.monotonic() - started < 10.0
    await asyncio.wait_for(upstream.ended[0].wait(), 10.0)  # dropped, not put back in the pool
    assert await get(gw) == 200 and upstream.accepted == 2


async def test_global_response_timeout_applies_when_the_route_sets_none(start_gateway: StartGateway,
                                                                        scripted: MakeUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)

    gw = await gateway_to(start_gateway, scripted(script), response_timeout_s=0.3)
    assert await get(gw) == 504


async def test_response_timeout_minus_one_waits(start_gateway: StartGateway, scripted: MakeUpstream) -> None:
    answer = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        await answer.wait()
        writer.write(OK)

    gw = await gateway_to(start_gateway, scripted(script),
                          metadata=RouteMetadata(response_timeout_s=float("inf")), response_timeout_s=0.2)
    pending = asyncio.ensure_future(get(gw))
    done, _ = await asyncio.wait({pending}, timeout=1.0)  # five global timeouts: the route's -1 wins
    assert not done
    answer.set()
    assert await pending == 200


async def test_instance_pausing_inside_its_body_is_cut_off(start_gateway: StartGateway, scripted: MakeUpstream) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok")  # then nothing

    upstream = scripted(script)
    gw = await gateway_to(start_gateway, upstream, metadata=RouteMetadata(response_timeout_s=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), 10.0)  # the gateway closes the client connection
    writer.close()
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(b"ok")
    await asyncio.wait_for(upstream.ended[0].wait(), 10.0)


@pytest.mark.parametrize(("answer", "then_close"), [
    (OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False),  # one response too many: an unread response
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),  # more bytes than the body
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", False),  # unasked upgrade
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", True),  # a short body
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\n", False),  # bare LF at the end
])
async def test_pooled_connection_is_not_reused_after_a_doubtful_response(start_gateway: StartGateway,
        scripted: MakeUpstream, answer: bytes, then_close: bool) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        if index > 0:
            writer.write(OK)
            return
        writer.write(answer)
        if then_close:
            writer.close()

    upstream = scripted(script)
    gw = await gateway_to(start_gateway, upstream)
    await get(gw)  # whatever the first answer was
    await asyncio.wait_for(upstream.ended[0].wait(), 10.0)
    assert await get(gw) == 200
    assert upstream.accepted == 2


async def test_request_body_cut_short_closes_the_upstream_connection(start_gateway: StartGateway,
                                                                     scripted: MakeUpstream) -> None:
    heads: list[bytes] = []
    first_head = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        heads.append(await read_request(reader))
        first_head.set()
        if index > 0:
            writer.write(OK)

    upstream = scripted(script)
    gw = await gateway_to(start_gateway, upstream)
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nhello")
    await asyncio.wait_for(first_head.wait(), 10.0)
    writer.close()  # five bytes short
    await asyncio.wait_for(upstream.ended[0].wait(), 10.0)
    assert await get(gw, "/next") == 200
    assert upstream.accepted == 2 and heads[1].startswith(b"GET /next ")


async def test_pooled_connections_have_tcp_keepalive(start_gateway: StartGateway, scripted: MakeUpstream,
                                                    request: pytest.FixtureRequest) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await read_request(reader)
        writer.write(OK)

    gw = await gateway_to(start_gateway, scripted(script))
    assert await get(gw) == 200
    if gw.server.native_http is not None:  # the native lane's own pool
        fds = gw.server.native_http.lane.pooled()
        assert len(fds) == 1
        sock = socket.socket(fileno=os.dup(fds[0]))
        request.addfinalizer(sock.close)
    else:
        idle = [conn for stack in gw.server.pool._idle.values() for _, conn in stack]
        assert len(idle) == 1 and idle[0].transport is not None
        sock = idle[0].transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 15
