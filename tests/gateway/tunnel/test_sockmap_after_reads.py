"""The sockmap relay takes a tunnel only after the thread relayed a few reads of it (`wsgate.sockmap-after-reads`).

Entering and leaving the sockmaps costs more system calls than a message relayed by the thread, so a tunnel that
closes after a message each way (a reconnect, a health check) stays on the thread, and one that keeps talking goes
to the kernel in the middle of its stream. These cases hold both: nothing lost, doubled or reordered across the
entry, byte counts right, and the entry happening at the read it should. Over real loopback sockets, first with
the relay alone (gateway._relay), then through the gateway with its default setting.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway.config.model import ServerSettings
from gateway.tunnel import native as native_relay
from tests.gateway import conftest
from tests.gateway.conftest import StartGateway, StartUpstream, route
from tests.gateway.rawsock import recv_exactly, recv_until_eof
from tests.gateway.tunnel.test_native_relay import Tunnel, finished


def sockmap_relay(after_reads: int) -> Any:
    if not native_relay.available():
        pytest.fail("gateway._relay is not built (pip install -e . needs a C compiler)")
    from gateway import _relay  # type: ignore[attr-defined,unused-ignore]

    relay = _relay.Relay(sockmap=True, sockmap_after_reads=after_reads)
    on, why = relay.sockmap()
    if not on:
        relay.stop()
        pytest.fail(f"the sockmap relay did not load: {why}")
    return relay


@pytest.fixture
def relay() -> Iterator[Any]:
    r = sockmap_relay(4)
    yield r
    r.stop()


def round_trip(t: Tunnel, ask: bytes, answer: bytes) -> None:
    t.client.sendall(ask)
    assert recv_exactly(t.upstream, len(ask)) == ask
    t.upstream.sendall(answer)
    assert recv_exactly(t.client, len(answer)) == answer


def wait_finished(relay: Any) -> tuple[int, int, int]:
    deadline = time.monotonic() + 5.0
    while (left := deadline - time.monotonic()) > 0:
        if select.select([relay.fileno()], [], [], left)[0] and (done := finished(relay)):
            assert len(done) == 1, done
            return done[0]
    raise AssertionError("the tunnel did not finish in time")


def test_the_default_is_a_few_reads() -> None:
    assert ServerSettings().sockmap_after_reads == 4


def test_a_tunnel_that_closes_after_a_message_each_way_never_enters(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        round_trip(t, b"\x81\x05hello", b"\x81\x05world")
        t.upstream.close()  # the instance ends it: the client gets the EOF, then its side closes too
        assert recv_until_eof(t.client) == b""
        t.client.close()
        _, from_client, from_upstream = wait_finished(relay)
        assert from_client == 7 and from_upstream in (7, 8)  # TCP_INFO counts sequence numbers: the FIN may add one
        assert relay.stats()["sockmap_entered"] == 0
        assert relay.stats()["sockmap_left"] == 0
    finally:
        t.close()


def test_a_tunnel_goes_to_the_kernel_at_the_read_after_its_fourth(relay: Any, listener: socket.socket) -> None:
    t = Tunnel(relay, listener)
    try:
        round_trip(t, b"ask 1", b"answer 1")
        round_trip(t, b"ask 2", b"answer 2")
        assert relay.stats()["sockmap_entered"] == 0  # four reads so far, all the thread's
        # The fifth read is the entry's: it relays what is queued and hands both sockets over. The answer came
        # after the entry began, so once it is through, the entry is counted.
        round_trip(t, b"ask 3", b"answer 3")
        assert relay.stats()["sockmap_entered"] == 1
        sent = 0
        for k in range(200):  # the kernel's from here; nothing doubled or lost
            message = b"%d:" % k + b"x" * 100
            round_trip(t, message, message.upper())
            sent += len(message)
        assert relay.stats()["sockmap_entered"] == 1 and relay.stats()["sockmap_left"] == 0
        t.client.shutdown(socket.SHUT_WR)
        assert recv_until_eof(t.upstream) == b""
        t.upstream.close()
        assert recv_until_eof(t.client) == b""
        t.client.close()
        _, from_client, from_upstream = wait_finished(relay)
        assert from_client in (15 + sent, 16 + sent) and from_upstream == 24 + sent  # (the client's FIN)
    finally:
        t.close()


def test_bytes_arriving_on_both_sides_at_the_entry_are_relayed_once_in_order(
        relay: Any, listener: socket.socket) -> None:
    """The entry takes what each socket holds first (until a short read), so the kernel starts from whole skbs."""
    t = Tunnel(relay, listener)
    try:
        for k in range(2):
            round_trip(t, b"warm %d" % k, b"warm %d" % k)
        # Both bursts at once, each within the sockets' buffers: the fifth read finds the first of them.
        to_upstream, to_client = os.urandom(48 * 1024), os.urandom(48 * 1024)
        t.client.sendall(to_upstream)
        t.upstream.sendall(to_client)
        assert recv_exactly(t.upstream, len(to_upstream)) == to_upstream
        assert recv_exactly(t.client, len(to_client)) == to_client
        round_trip(t, b"after", b"AFTER")
        assert relay.stats()["sockmap_entered"] == 1
    finally:
        t.close()


async def test_through_the_gateway_a_short_tunnel_stays_and_a_long_one_enters(
        start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    on, why = native_relay.sockmap_supported()
    if not on:
        pytest.fail(f"the sockmap relay does not load here: {why}")
    port = await start_upstream()
    gw = await start_gateway(conftest.config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"]),
                                             sockmap_relay=True))  # the default sockmap-after-reads
    relay = gw.server.tunnels.native_relay(asyncio.get_running_loop())
    assert relay is not None and relay.sockmap
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{gw.ws_url}/short?compress=0") as ws:
            await ws.send_str("once")
            assert (await ws.receive()).data == "once"
        assert relay.stats()["sockmap_entered"] == 0
        async with session.ws_connect(f"{gw.ws_url}/long?compress=0") as ws:
            for k in range(20):
                await ws.send_str(f"message {k}")
                assert (await ws.receive()).data == f"message {k}"
            assert relay.stats()["sockmap_entered"] == 1
