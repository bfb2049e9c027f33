"""The Python relay's lingering close on its own (gateway.tunnel.python_relay.Tunnel over real loopback TCP
connections).

The test holds the far ends; `Tunnel` relays between the near ends. The native relay's counterpart is
tests/gateway/tunnel/test_native_relay.py::test_relay_lingers_at_most_linger_ms_for_a_peer_that_never_closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.proxy.conn import Conn
from gateway.tunnel.linger import CloseTimeouts
from gateway.tunnel.python_relay import Tunnel
from tests.gateway.procs import eventually


class Ends:
    """Two TCP connections: the near ends (Conn, for the tunnel) and the far ends (streams, for the test)."""

    def __init__(self) -> None:
        self.near: list[Conn] = []
        self.far: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, port: int) -> None:
        for _ in range(2):
            self.far.append(await asyncio.open_connection("127.0.0.1", port))
        assert await eventually(lambda: len(self.near) == 2 and all(c.transport for c in self.near))


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    loop = asyncio.get_running_loop()
    pair = Ends()

    def accepted() -> Conn:
        pair.near.append(Conn(loop))
        return pair.near[-1]

    server = await loop.create_server(accepted, "127.0.0.1", 0)
    await pair.open(server.sockets[0].getsockname()[1])
    yield pair
    for _, writer in pair.far:
        writer.close()
    server.close()


async def test_python_relay_lingers_at_most_linger_s_for_a_client_that_never_closes(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    tunnel = Tunnel(ends.near[0], ends.near[1], timeouts=CloseTimeouts(flush_timeout_s=5.0, linger_s=0.2))
    (client_reader, client_writer), (_, upstream_writer) = ends.far
    upstream_writer.write(b"last words")
    upstream_writer.close()  # the instance ends
    assert await asyncio.wait_for(client_reader.read(), 5) == b"last words"  # then EOF: the write side is shut down
    started = loop.time()
    client_writer.write(b"still sending")  # dropped, and no reset for it: the client can keep writing
    await client_writer.drain()
    await asyncio.wait_for(tunnel.done, 5)  # the client never closes: cut off after the linger
    assert loop.time() - started >= 0.15


async def test_python_relay_ends_at_the_clients_eof_without_waiting_for_the_linger(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    tunnel = Tunnel(ends.near[0], ends.near[1], timeouts=CloseTimeouts(flush_timeout_s=30.0, linger_s=30.0))
    (client_reader, client_writer), (_, upstream_writer) = ends.far
    upstream_writer.close()
    assert await asyncio.wait_for(client_reader.read(), 5) == b""
    started = loop.time()
    client_writer.close()
    await asyncio.wait_for(tunnel.done, 5)
    assert loop.time() - started < 5
