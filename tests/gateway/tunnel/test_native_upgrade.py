"""WebSocket upgrades the relay thread dials itself (`GatewayServer._upgrade_native`), over real loopback sockets.

The thread connects, sends the request and forwards a plain 101; everything else comes back to Python. These tests
check each way back (a refusal, a rewritten 101, a timeout, an instance that hangs up, a host name, a caller that
gives up) gives the same answers as the ordinary path, and that nothing is left open afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from gateway.discovery.base import Endpoint
from gateway.discovery.static import StaticProvider
from gateway.model import RouteMetadata
from gateway.tunnel import native as native_relay
from gateway.tunnel.native import NativeTunnel
from tests.gateway.conftest import RunningGateway, StartGateway, StartUpstream, config, route
from tests.gateway.rawsock import switching_protocols

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartRaw = Callable[[RawHandler], Awaitable[int]]


@pytest.fixture(autouse=True)
def native_built() -> None:
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")


@pytest.fixture
async def start_raw() -> AsyncIterator[StartRaw]:
    """Hand-written instances (asyncio servers on loopback); returns each one's port."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
    for writer in writers:  # connections a handler still holds: closed before the loop ends
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    for server in servers:
        await server.wait_closed()


class Silent:
    """An instance that reads the request and never answers, until the gateway hangs up."""

    def __init__(self) -> None:
        self.heard = asyncio.Event()
        self.hung_up = asyncio.Event()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.heard.set()
        await reader.read()
        self.hung_up.set()


async def refused_status(gw: RunningGateway) -> int:
    """The status a WebSocket handshake through `gw` is refused with."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as error:
            await session.ws_connect(f"{gw.ws_url}/ws")
    return error.value.status


async def test_native_upgrade_tunnel_is_native_and_counted(start_upstream: StartUpstream,
                                                           start_gateway: StartGateway) -> None:
    port = await start_upstream("one")
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        assert ws._response.headers["X-Upstream"] == "one"
        await ws.send_str("whoami")
        assert (await ws.receive()).data == "one"
        [tunnel] = list(gw.server.tunnels)
        assert isinstance(tunnel, NativeTunnel)
        assert not gw.server.connections  # the client connection belongs to the tunnel now
        assert gw.metrics.value("wsgate_requests_total", route="ws", status="101") == 1
        assert gw.metrics.value("wsgate_upgrades_total", route="ws", instance=f"127.0.0.1:{port}") == 1
        assert gw.metrics.value("wsgate_active_tunnels", route="ws") == 1
    await asyncio.wait_for(tunnel.done, 5)
    assert gw.metrics.value("wsgate_active_tunnels", route="ws") == 0
    assert gw.balancer.active(Endpoint("127.0.0.1", port)) == 0


async def test_native_upgrade_route_rewriting_the_101_goes_through_python(start_upstream: StartUpstream,
                                                                         start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"],
                                          ["AddResponseHeader=X-Route, ws"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        assert ws._response.headers["X-Route"] == "ws"
        await ws.send_str("ping")
        assert (await ws.receive()).data == "ping"
        [tunnel] = list(gw.server.tunnels)
        assert isinstance(tunnel, NativeTunnel)  # adopted after Python wrote the 101


async def test_native_upgrade_refusal_keeps_the_client_connection(start_upstream: StartUpstream,
                                                                  start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        upgrade = (b"GET /ws?status=403 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        writer.write(upgrade)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 403 ")
        assert b"session=abc123" in head
        length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        await asyncio.wait_for(reader.readexactly(length), 5)
        # The same connection carries the next request: the handed-back head left it readable.
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert second.startswith(b"HTTP/1.1 ")
    finally:
        writer.close()
    assert not gw.server.tunnels
    assert gw.metrics.value("wsgate_requests_total", route="ws", status="403") == 1


async def test_native_upgrade_answers_504_when_the_instance_stays_silent(start_raw: StartRaw,
                                                                         start_gateway: StartGateway) -> None:
    silent = Silent()
    port = await start_raw(silent)
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"],
                                          metadata=RouteMetadata(response_timeout_s=0.2))))
    assert await refused_status(gw) == 504
    assert silent.heard.is_set()
    await asyncio.wait_for(silent.hung_up.wait(), 5)
    assert gw.metrics.value("wsgate_upstream_errors_total", route="ws", instance=f"127.0.0.1:{port}",
                            reason="timeout") == 1


async def test_native_upgrade_answers_502_when_the_instance_hangs_up(start_raw: StartRaw,
                                                                     start_gateway: StartGateway) -> None:
    async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    port = await start_raw(rude)
    assert await refused_status(await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))) == 502


async def test_native_upgrade_answers_502_to_a_malformed_head(start_raw: StartRaw,
                                                              start_gateway: StartGateway) -> None:
    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await reader.read()

    port = await start_raw(garbled)
    assert await refused_status(await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))) == 502


async def test_native_upgrade_forwards_bytes_sent_with_the_101(start_raw: StartRaw,
                                                               start_gateway: StartGateway) -> None:
    async def eager(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The 101 and a first text frame ("hi") in one write: both must reach the client, in order.
        writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")) + b"\x81\x02hi")
        await reader.read(1)  # the client's close frame begins: answer it with ours
        writer.write(b"\x88\x02\x03\xe8")

    port = await start_raw(eager)
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        assert (await asyncio.wait_for(ws.receive(), 5)).data == "hi"


async def test_native_upgrade_host_name_instances_use_the_python_dial(start_upstream: StartUpstream,
                                                                      start_gateway: StartGateway) -> None:
    port = await start_upstream("named")
    provider = StaticProvider({"svc": (Endpoint("localhost", port),)})
    gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"])), provider=provider)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        await ws.send_str("whoami")
        assert (await ws.receive()).data == "named"
        [tunnel] = list(gw.server.tunnels)
        assert isinstance(tunnel, NativeTunnel)  # dialed by Python, then handed to the thread


async def test_native_upgrade_skips_instances_that_refuse_or_time_out(start_upstream: StartUpstream,
                                                                      start_gateway: StartGateway) -> None:
    good = await start_upstream("good")
    # A listener whose accept queue is full: Linux drops further SYNs, so connecting there times out.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(full.getsockname())
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    try:
        endpoints = (Endpoint("127.0.0.1", refused.getsockname()[1]), Endpoint("127.0.0.1", full.getsockname()[1]),
                     Endpoint("127.0.0.1", good))
        provider = StaticProvider({"svc": endpoints})
        gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"],
                                              metadata=RouteMetadata(connect_timeout_s=0.2))), provider=provider)
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.ws_connect(f"{gw.ws_url}/ws") as ws:
                    await ws.send_str("whoami")
                    assert (await ws.receive()).data == "good"
        for endpoint, reason in ((endpoints[0], "refused"), (endpoints[1], "timeout")):
            assert gw.metrics.value("wsgate_upstream_errors_total", route="ws", instance=endpoint.address,
                                    reason=reason) >= 1
    finally:
        for sock in (*fillers, full, refused):
            sock.close()


async def test_native_upgrade_cancelled_caller_aborts_the_dial(start_raw: StartRaw,
                                                               start_gateway: StartGateway) -> None:
    silent = Silent()
    port = await start_raw(silent)
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await asyncio.wait_for(silent.heard.wait(), 5)
    [conn] = list(gw.server.connections)
    assert conn.task is not None
    conn.task.cancel()
    await asyncio.wait_for(silent.hung_up.wait(), 5)  # the relay thread closed its connection to the instance
    # EOF only once every descriptor of the client's connection is closed: the thread's and the transport's.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    assert not gw.server.tunnels
