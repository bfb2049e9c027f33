"""WebSocket through the gateway: the instance's handshake answer reaches the client, then bytes flow untouched.

Every test runs against each relay of `gateway.tunnel.registry.RELAY_KINDS`: the kernel's sockmap redirect (with the
native thread keeping the rules), the native thread alone (gateway._relay) and uvloop transports in Python; a relay
added there gets every case, the lingering close's included.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import termios
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType

from gateway.config.model import GatewayConfig, RouteSpec
from gateway.tunnel import native as native_relay
from gateway.tunnel.native import NativeTunnel
from gateway.tunnel.python_relay import Tunnel
from gateway.tunnel.registry import RELAY_KINDS
from harness import ProcessGroup, RedisInfo, free_port
from tests.gateway import conftest
from tests.gateway.conftest import StartGateway, StartUpstream, route
from tests.gateway.procs import eventually
from tests.gateway.rawsock import switching_protocols
from tests.wsnode.conftest import API_KEY, SECRET, make_token

_kind = {"relay": "native"}


@pytest.fixture(autouse=True, params=RELAY_KINDS)
def relay_kind(request: pytest.FixtureRequest) -> str:
    """Which relay carries this test's tunnels (a missing native build or a kernel that refuses the sockmap fails
    rather than hiding)."""
    if request.param != "python" and not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")
    if request.param == "sockmap":
        on, why = native_relay.sockmap_supported()
        if not on:
            pytest.fail(f"the sockmap relay does not load here: {why}")
    _kind["relay"] = str(request.param)
    return str(request.param)


def config(*routes: RouteSpec, **server: object) -> GatewayConfig:
    # The sockmap kind hands each tunnel to the kernel at its 101 (`sockmap-after-reads: 0`), so that every case
    # runs through the kernel from the first byte; test_sockmap_after_reads.py covers the default's later entry.
    return conftest.config(*routes, native_relay=_kind["relay"] != "python", sockmap_relay=_kind["relay"] == "sockmap",
                           **({"sockmap_after_reads": 0} if _kind["relay"] == "sockmap" else {}), **server)


def expected_type(kind: str) -> type[object]:
    return Tunnel if kind == "python" else NativeTunnel


def assert_relayed_by(gw: conftest.RunningGateway, kind: str) -> None:
    """The tunnels so far went where `kind` says: into the kernel for "sockmap", never for "native"."""
    relay = gw.server.tunnels.native_relay(asyncio.get_running_loop())
    if kind == "python":
        return
    assert relay is not None
    entered = relay.stats()["sockmap_entered"]
    assert entered > 0 if kind == "sockmap" else entered == 0, relay.stats()


async def test_tunnel_echoes_text_and_binary(start_upstream: StartUpstream, start_gateway: StartGateway,
                                            relay_kind: str) -> None:
    port = await start_upstream("one")
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/ws-svc/**"],
                                          ["RewritePath=/ws-svc/(?<path>.*), /$\\{path}"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws-svc/ws") as ws:
        assert ws._response.headers["X-Upstream"] == "one"
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive()).data == b"\x00\x01\x02"
        assert_relayed_by(gw, relay_kind)


async def test_tunnel_relays_subprotocol_and_deflate(start_upstream: StartUpstream,
                                                     start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{gw.ws_url}/ws?protocols=v2.chat", protocols=("v1.chat", "v2.chat"), compress=15) as ws:
        assert ws.protocol == "v2.chat"
        assert ws.compress == 15
        assert "permessage-deflate" in ws._response.headers["Sec-WebSocket-Extensions"]
        await ws.send_str("x" * 5000)
        assert (await ws.receive()).data == "x" * 5000


async def test_tunnel_passes_one_mebibyte_both_ways(start_upstream: StartUpstream,
                                                    start_gateway: StartGateway, relay_kind: str) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    payload = os.urandom(1024 * 1024)
    async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{gw.ws_url}/ws?compress=0", max_msg_size=4 * 1024 * 1024) as ws:
        await ws.send_bytes(payload)
        message = await ws.receive()
        assert message.type == WSMsgType.BINARY
        assert message.data == payload
        assert_relayed_by(gw, relay_kind)


async def test_tunnel_passes_close_code_from_upstream(start_upstream: StartUpstream,
                                                      start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        await ws.send_str("close:4999")
        message = await ws.receive()
        assert message.type == WSMsgType.CLOSE
        assert message.data == 4999


async def test_tunnel_relays_upstream_refusal_with_cookie(start_upstream: StartUpstream,
                                                          start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session:
        try:
            await session.ws_connect(f"{gw.ws_url}/ws?status=403")
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 403
            assert error.headers is not None
            assert "session=abc123" in error.headers.get("Set-Cookie", "")
        else:
            raise AssertionError("handshake should have been refused")


async def test_tunnel_client_close_closes_upstream(start_upstream: StartUpstream,
                                                   start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{gw.ws_url}/ws")
        await ws.send_str("ping")
        await ws.receive()
        assert len(gw.server.tunnels) == 1
        tunnel = next(iter(gw.server.tunnels))
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        await asyncio.wait_for(tunnel.done, 5)
        assert not gw.server.tunnels
        assert gw.metrics.value("wsgate_active_tunnels", route="ws") == 0


async def test_tunnel_upstream_close_closes_client(start_gateway: StartGateway, relay_kind: str) -> None:
    upstream_writer: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def raw_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")))
        upstream_writer.set_result(writer)
        await reader.read()

    server = await asyncio.start_server(raw_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
            tunnel = next(iter(gw.server.tunnels))
            assert isinstance(tunnel, expected_type(relay_kind))
            (await asyncio.wait_for(upstream_writer, 5)).transport.abort()
            message = await asyncio.wait_for(ws.receive(), 5)
            assert message.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSE)
            await asyncio.wait_for(tunnel.done, 5)
    finally:
        server.close()
        await server.wait_closed()


async def test_tunnel_idle_timeout_closes_quiet_tunnel(start_upstream: StartUpstream,
                                                       start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"]), idle_timeout_s=0.2))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws", autoping=False,
                                                                      heartbeat=None) as ws:
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSE)


async def test_tunnel_counts_upgrades_and_bytes(start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{gw.ws_url}/ws?compress=0", compress=0) as ws:
            assert gw.metrics.value("wsgate_active_tunnels", route="ws") == 1
            await ws.send_bytes(b"x" * 1000)
            await ws.receive()
            tunnel = next(iter(gw.server.tunnels))
        await asyncio.wait_for(tunnel.done, 5)
    assert gw.metrics.value("wsgate_upgrades_total", route="ws", instance=f"127.0.0.1:{port}") == 1
    assert gw.metrics.value("wsgate_tunnel_bytes_total", route="ws", direction="upstream") > 1000
    assert gw.metrics.value("wsgate_tunnel_bytes_total", route="ws", direction="downstream") > 1000


async def test_tunnel_forwards_bytes_that_arrive_with_the_heads(start_gateway: StartGateway) -> None:
    received = asyncio.get_running_loop().create_future()

    async def raw_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"GET /raw HTTP/1.1")
        # The 101 and the first tunnel bytes in one write: the gateway must not lose the bytes after the head.
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nHELLO")
        received.set_result(await reader.readexactly(4))
        writer.write(b"\x00\xffBYE")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config(route("raw", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nPING")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        assert await asyncio.wait_for(received, 5) == b"PING"
        assert await asyncio.wait_for(reader.read(), 5) == b"\x00\xffBYE"  # then EOF: the upstream closed
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


CLOSE_CODE_ROUNDS = 100


async def test_tunnel_delivers_close_code_of_a_node_that_closes_while_the_client_sends(
        start_gateway: StartGateway, procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str,
        relay_kind: str) -> None:
    if relay_kind == "sockmap":
        # Known defect, why the sockmap relay is opt-in (docs/gateway.md): a full CI run lost 1 close code of 100
        # here ({'1009': 99, 'CLOSED': 1}); 5,100 closes since lost none, so it is rare, not understood, not fixed.
        # Skipped visibly rather than made lenient.
        pytest.skip("sockmap relay: lost a close code once (1 of 100 in a CI run, none of 5,100 since; opt-in)")
    # The node refuses a 16 MiB frame after its header (limit 1 MiB) and closes 1009 while the client is still
    # sending; a relay that closes the client's socket with that input unread makes the kernel send a reset, which
    # destroys the close frame on its way. Direct to the node this holds every time; so must it through the tunnel.
    node_port = free_port()
    node = procs.python("node", "wsnode", "--port", str(node_port), "--host", "127.0.0.1", "--node-id", "node",
                        "--redis", redis_server.url, "--redis-prefix", redis_prefix, "--jwt-secret", SECRET,
                        "--api-key", API_KEY, "--max-frame-bytes", str(1 << 20),
                        # a publish budget per user must fit the largest frame the node takes
                        "--publish-bytes-rate", str(1 << 20))
    await node.wait_http_ready_async(f"http://127.0.0.1:{node_port}/health")
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{node_port}", ["Path=/**"])))
    frame = os.urandom(16 << 20)
    codes: list[int | str] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(CLOSE_CODE_ROUNDS):
            async with session.ws_connect(f"{gw.ws_url}/websocket", params={"token": make_token("ann")},
                                          autoping=False, heartbeat=None) as ws:
                assert (await ws.receive(timeout=10)).type == WSMsgType.TEXT  # the welcome frame
                sending = asyncio.ensure_future(ws.send_bytes(frame))
                message = await ws.receive(timeout=10)
                with contextlib.suppress(OSError, aiohttp.ClientError):
                    await sending
                codes.append(message.data if message.type == WSMsgType.CLOSE else message.type.name)
    assert codes == [1009] * CLOSE_CODE_ROUNDS, {str(code): codes.count(code) for code in set(codes)}


BURST_BYTES = 200 * 1024


def counting(start: int, n: int) -> bytes:
    """Bytes `start` to `start + n` of a stream of 4-byte big-endian counters: a lost, repeated or reordered byte
    changes what follows."""
    first, skip = divmod(start, 4)
    words = b"".join((k & 0xFFFFFFFF).to_bytes(4, "big") for k in range(first, first + (skip + n + 3) // 4 + 1))
    return words[skip:skip + n]


def first_difference(got: bytes, want: bytes) -> str:
    at = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return (f"{len(got)} of {len(want)} bytes, first difference at {at}: "
            f"{got[at:at + 16].hex()} != {want[at:at + 16].hex()}")


async def write_counting(writer: asyncio.StreamWriter, first: bytes, total: int) -> None:
    """`first` then the counter stream: its first bytes in the same write as `first`, the rest in many small writes
    (most without waiting for the socket, then while the other side reads)."""
    writer.write(first + counting(0, 700))
    sent = 700
    sizes = (1, 13, 300, 1448, 4096, 7)
    k = 0
    while sent < total:
        n = min(sizes[k % len(sizes)], total - sent)
        writer.write(counting(sent, n))
        sent += n
        k += 1
        if k % 64 == 0:
            await writer.drain()
    await writer.drain()


RAW_UPGRADE = (b"GET /raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def read_counted(reader: asyncio.StreamReader) -> bytes:
    """What comes within 5 s of each read, up to BURST_BYTES or a little more."""
    got = bytearray()
    with contextlib.suppress(asyncio.TimeoutError):
        while len(got) < BURST_BYTES:
            got += await asyncio.wait_for(reader.read(65536), 5)
    return bytes(got)


def assert_counted(got: bytes) -> None:
    assert got == counting(0, BURST_BYTES), first_difference(got, counting(0, BURST_BYTES))


async def burst_rounds(start_gateway: StartGateway, relay_kind: str,
                       upstream: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                       client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
    """Ten tunnels from `client` through the gateway to `upstream` (raw sockets on both sides), one after the
    other."""
    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config(route("raw", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    try:
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                await client(reader, writer)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        assert_relayed_by(gw, relay_kind)
    finally:
        server.close()
        await server.wait_closed()


async def test_tunnel_keeps_the_order_of_a_burst_right_after_the_101(start_gateway: StartGateway,
                                                                    relay_kind: str) -> None:
    # A node that replays stored messages right after its 101 (in the same segments, then more while the client
    # reads): the handover from the thread's read of the head to the kernel must lose, repeat or reorder nothing.
    # The sockmap relay once sent the 101 and the bytes after it twice: the kernel's first verdict run redirected
    # the skb the thread had read the head from whole, from its start.
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await write_counting(writer, switching_protocols(await reader.readuntil(b"\r\n\r\n")), BURST_BYTES)
            await reader.read()
        finally:
            writer.close()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(RAW_UPGRADE)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
        assert_counted(await read_counted(reader))

    await burst_rounds(start_gateway, relay_kind, upstream, client)


async def test_tunnel_keeps_the_order_of_a_burst_right_after_the_upgrade_request(start_gateway: StartGateway,
                                                                                relay_kind: str) -> None:
    # The other way: a client that sends right after its request, before the 101 comes back, and keeps sending
    # (the gateway reads the request with some of these bytes).
    results: asyncio.Queue[bytes] = asyncio.Queue()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")))
        results.put_nowait(await read_counted(reader))
        writer.close()
        await writer.wait_closed()

    async def client(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await write_counting(writer, RAW_UPGRADE, BURST_BYTES)
        assert_counted(await asyncio.wait_for(results.get(), 10))

    await burst_rounds(start_gateway, relay_kind, upstream, client)


# A WebSocket close frame with code 1009, as a node sends it (server frames are not masked).
CLOSE_1009 = b"\x88\x02\x03\xf1"
FLOOD_BYTES = 48 << 20
FLOOD_ROUNDS = 3


def queued_input(sock: socket.socket) -> int:
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")


def queued_output(sock: socket.socket) -> int:
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"), "little")


async def test_tunnel_delivers_what_a_node_sent_before_its_reset_while_the_client_floods_it(
        start_gateway: StartGateway, relay_kind: str) -> None:
    # The node stops reading while the client goes on sending until the gateway takes no more (through the kernel,
    # the sockmap relay hands that direction back to the thread), then sends a close frame and resets. The frame
    # was sent before the reset, so it must reach the client, ahead of any reset the client gets.
    for _ in range(FLOOD_ROUNDS):
        message = await close_after_flood(start_gateway, relay_kind)
        assert (message.type, message.data) == (WSMsgType.CLOSE, 1009), message


async def close_after_flood(start_gateway: StartGateway, relay_kind: str) -> aiohttp.WSMessage:
    upstream_sock: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def raw_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching_protocols(await reader.readuntil(b"\r\n\r\n")))
        upstream_sock.set_result(writer.get_extra_info("socket"))
        await release.wait()
        writer.write(CLOSE_1009)
        await writer.drain()
        writer.transport.abort()  # the client's bytes unread: a reset

    server = await asyncio.start_server(raw_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    relay = gw.server.tunnels.native_relay(asyncio.get_running_loop())
    pauses = relay.stats()["sockmap_pauses"] if relay is not None else 0
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"{gw.ws_url}/ws", autoping=False, heartbeat=None, compress=0) as ws:
            sock = await asyncio.wait_for(upstream_sock, 5)
            sending = asyncio.ensure_future(ws.send_bytes(bytes(FLOOD_BYTES)))
            assert await eventually(lambda: queued_input(sock) > 64 << 10, timeout_s=20), \
                "the node's input did not queue up"
            if relay_kind == "sockmap":
                assert relay is not None
                assert await eventually(lambda: relay.stats()["sockmap_pauses"] > pauses, timeout_s=20), \
                    "the kernel did not pause that direction"
            assert ws._response.connection is not None and ws._response.connection.transport is not None
            client_sock = ws._response.connection.transport.get_extra_info("socket")
            assert await eventually(lambda: queued_output(client_sock) > 512 << 10, timeout_s=20), \
                "the client's send queue did not fill"
            assert not sending.done()
            release.set()
            message = await ws.receive(timeout=10)
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, aiohttp.ClientError):
                await sending
            return message
    finally:
        server.close()
        await server.wait_closed()
