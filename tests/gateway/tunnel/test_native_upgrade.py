"""WebSocket upgrades the relay thread dials itself (`GatewayServer._upgrade_native`), over real loopback sockets.

The thread connects, sends the request and forwards a plain 101; everything else comes back to Python. These tests
check each way back (a refusal, a rewritten 101, a timeout, an instance that hangs up, a host name, a caller that
gives up) gives the same answers as the ordinary path, and that nothing is left open afterwards.

Every test runs behind each HTTP lane: with the native one (`wsgate.native-http`) the upgrade's descriptor goes from
the lane to the relay's dial without a Python transport (gateway/proxy/lane_upgrades.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from bench.wsproto_min import accept_key
from gateway.discovery.base import Endpoint
from gateway.discovery.static import StaticProvider
from gateway.model import BalancerChoice, Balancing, RouteMetadata
from gateway.proxy import native_http
from gateway.routing.table import RouteTable
from gateway.routing.targets import RoutingState
from gateway.tunnel import native as native_relay
from gateway.tunnel.native import NativeTunnel
from tests.gateway.conftest import RunningGateway, StartGateway, StartUpstream, config, route
from tests.gateway.rawsock import silent_listener, switching_protocols

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartRaw = Callable[[RawHandler], Awaitable[int]]


@pytest.fixture(autouse=True)
def native_built() -> None:
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")


@pytest.fixture(autouse=True, params=("native", "python"))
def http_lane(request: pytest.FixtureRequest) -> str:
    """The HTTP lane of this test's gateways (see tests/gateway/proxy/conftest.py)."""
    if request.param == "native" and not native_http.available():
        pytest.fail("gateway._http is not built (pip install -e . needs a C compiler)")
    return str(request.param)


def lane_upgraded(gw: RunningGateway) -> int:
    """Upgrades the native HTTP lane handed straight to the relay's dial (0 behind the Python lane)."""
    lane = gw.server.native_http
    len(gw.server.tunnels)  # a registry read takes the relay's quiet reports (the lane's own dials) first
    return 0 if lane is None else lane.upgrades.upgraded


def upgrade_head(path: bytes = b"/ws", key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    return (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


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
                                                           start_gateway: StartGateway, http_lane: str) -> None:
    port = await start_upstream("one")
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        assert ws._response.headers["X-Upstream"] == "one"
        await ws.send_str("whoami")
        assert (await ws.receive()).data == "one"
        [tunnel] = list(gw.server.tunnels)
        assert isinstance(tunnel, NativeTunnel)
        assert not gw.server.connections  # the client connection belongs to the tunnel now
        assert lane_upgraded(gw) == (1 if http_lane == "native" else 0)
        if gw.server.native_http is not None:
            assert gw.server.native_http.count() == 0  # neither the lane's connection nor a pending dial
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
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    try:
        with silent_listener() as full:
            endpoints = (Endpoint("127.0.0.1", refused.getsockname()[1]), Endpoint("127.0.0.1", full),
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
        refused.close()


async def test_native_upgrade_cancelled_caller_aborts_the_dial(start_raw: StartRaw, start_gateway: StartGateway,
                                                               http_lane: str) -> None:
    if http_lane == "native":
        pytest.skip("the lane's upgrades have no caller task to cancel: see the drain test for their abort")
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


async def test_native_upgrade_drain_aborts_a_pending_dial(start_raw: StartRaw, start_gateway: StartGateway) -> None:
    silent = Silent()
    port = await start_raw(silent)
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(upgrade_head())
    await asyncio.wait_for(silent.heard.wait(), 5)
    lane = gw.server.native_http
    if lane is not None:
        assert len(lane.upgrades.pending) == 1 and lane.count() == 1  # counted as the worker's while dialing
    await asyncio.wait_for(gw.server.drain(0.2), 5)
    await asyncio.wait_for(silent.hung_up.wait(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # every descriptor of the client's connection closed
    writer.close()
    await writer.wait_closed()
    assert not gw.server.tunnels
    if lane is not None:
        assert not lane.upgrades.pending


async def test_native_upgrade_picks_an_instance_per_upgrade(start_upstream: StartUpstream,
                                                            start_gateway: StartGateway, http_lane: str) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one), Endpoint("127.0.0.1", two))})
    gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"])), provider=provider)
    names = []
    for _ in range(4):  # the same head each time, key included: the lane's cached decision serves all four
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(upgrade_head())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 ")
            names.append(next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                              if line.lower().startswith(b"x-upstream:")))
        finally:
            writer.close()
    assert sorted(names) == [b"one", b"one", b"two", b"two"]  # round robin, per upgrade
    assert lane_upgraded(gw) == (4 if http_lane == "native" else 0)


async def test_native_upgrade_least_connections_counts_lane_tunnels(start_upstream: StartUpstream,
                                                                    start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one), Endpoint("127.0.0.1", two))})
    least = RouteMetadata(balancer=BalancerChoice(Balancing.LEAST_CONNECTIONS))
    gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"], metadata=least)), provider=provider)
    async with aiohttp.ClientSession() as session:
        held = [await session.ws_connect(f"{gw.ws_url}/ws") for _ in range(4)]
        try:
            names = [ws._response.headers["X-Upstream"] for ws in held]
            assert sorted(names) == ["one", "one", "two", "two"]
            assert gw.balancer.active(Endpoint("127.0.0.1", one)) == 2
            assert gw.balancer.active(Endpoint("127.0.0.1", two)) == 2
        finally:
            for ws in held:
                await ws.close()
    await asyncio.wait_for(asyncio.gather(*(t.done for t in list(gw.server.tunnels))), 5)
    assert gw.balancer.active(Endpoint("127.0.0.1", one)) == gw.balancer.active(Endpoint("127.0.0.1", two)) == 0


async def test_native_upgrade_each_client_gets_its_own_key_through(start_upstream: StartUpstream,
                                                                  start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    for key in (b"dGhlIHNhbXBsZSBub25jZQ==", b"AAAAAAAAAAAAAAAAAAAAAA==", b"dGhlIHNhbXBsZSBub25jZQ=="):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(upgrade_head(key=key))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 ")
            assert b"\r\nSec-WebSocket-Accept: " + accept_key(key) + b"\r\n" in head
        finally:
            writer.close()


async def test_native_upgrade_answers_503_when_every_instance_refuses(start_gateway: StartGateway) -> None:
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    try:
        port = refused.getsockname()[1]
        gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
        assert await refused_status(gw) == 503
        assert gw.metrics.value("wsgate_upstream_errors_total", route="ws", instance=f"127.0.0.1:{port}",
                                reason="refused") == 1
        assert gw.metrics.value("wsgate_requests_total", route="ws", status="503") == 1
    finally:
        refused.close()
    lane = gw.server.native_http
    assert lane is None or not lane.upgrades.pending


async def test_native_upgrade_with_bytes_after_the_head_goes_the_python_way(start_raw: StartRaw,
                                                                           start_gateway: StartGateway) -> None:
    async def eager(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")))
        writer.write(await reader.readexactly(4))  # the bytes the client sent right after its head come back

    port = await start_raw(eager)
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(upgrade_head() + b"ping")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    finally:
        writer.close()
    assert lane_upgraded(gw) == 0


async def test_native_upgrade_writes_its_access_log_line(start_upstream: StartUpstream, start_gateway: StartGateway,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"]), access_log=True))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws?v=1") as ws:
            await ws.send_str("ping")
            assert (await ws.receive()).data == "ping"
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    assert any(f'"GET /ws HTTP/1.1" 101 route=ws instance=127.0.0.1:{port}' in line for line in lines), lines


async def test_native_upgrade_follows_a_reload(start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{one}", ["Path=/**"])))

    async def upstream_name() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(upgrade_head())  # the same head each time: a cached decision must not outlive the reload
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 ")
            return next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"x-upstream:"))
        finally:
            writer.close()

    assert await upstream_name() == b"one"
    cfg = config(route("ws", f"ws://127.0.0.1:{two}", ["Path=/**"]), native_http=gw.server.settings.native_http)
    gw.server.state = RoutingState(cfg, RouteTable(cfg))
    assert await upstream_name() == b"two"


async def test_native_upgrade_a_plain_get_with_a_key_keeps_its_key(start_upstream: StartUpstream,
                                                                  start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    for key in ("dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA=="):  # no Upgrade: an ordinary request
        async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/plain",
                                                                   headers={"Sec-WebSocket-Key": key}) as response:
            assert response.status == 200
            headers = {name.lower(): value for name, value in (await response.json())["headers"]}
            assert headers["sec-websocket-key"] == key


async def test_native_upgrade_hashing_reads_each_clients_own_head(start_upstream: StartUpstream,
                                                                  start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one), Endpoint("127.0.0.1", two))})
    sticky = RouteMetadata(balancer=BalancerChoice(Balancing.HASH, "header:X-User"))
    gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"], metadata=sticky)), provider=provider)
    seen: dict[str, set[str]] = {}
    async with aiohttp.ClientSession() as session:
        # Sixteen users: the instances' ports are random, and with four, all of them hashed to one instance in one
        # run out of eight.
        for user in [f"user-{n}" for n in range(16)] * 2:
            async with session.ws_connect(f"{gw.ws_url}/ws", headers={"X-User": user}) as ws:
                seen.setdefault(user, set()).add(ws._response.headers["X-Upstream"])
    assert all(len(names) == 1 for names in seen.values())
    assert set().union(*seen.values()) == {"one", "two"}  # the users spread: the hash read each one's header
