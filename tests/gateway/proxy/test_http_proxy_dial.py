"""`http_proxy.dial`'s connect timeout: its own expiry is a TimeoutError, a caller's cancellation stays one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from gateway.discovery.base import Endpoint
from gateway.proxy.http import dial


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so new connects hang in SYN_SENT."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers: list[socket.socket] = []
    for _ in range(4):  # Linux queues backlog + 1 connections; the rest get no SYN-ACK
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in (*fillers, listener):
        sock.close()


async def test_dial_connects_and_returns_a_conn() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    conn = await dial(Endpoint("127.0.0.1", port), timeout_s=5.0, ssl_context=None)
    assert conn.transport is not None
    conn.close()
    server.close()
    await server.wait_closed()


async def test_dial_raises_timeout_error_when_connect_hangs(unanswered_port: int) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await dial(Endpoint("127.0.0.1", unanswered_port), timeout_s=0.2, ssl_context=None)
    assert loop.time() - started < 2.0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the timer's cancellation was taken back


async def test_dial_passes_a_callers_cancellation_on(unanswered_port: int) -> None:
    task = asyncio.ensure_future(dial(Endpoint("127.0.0.1", unanswered_port), timeout_s=5.0, ssl_context=None))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_dial_timeout_inside_an_outer_timeout_is_still_ours(unanswered_port: int) -> None:
    async with asyncio.timeout(10):  # an enclosing scope must not swallow or alter the inner expiry
        with pytest.raises(TimeoutError):
            await dial(Endpoint("127.0.0.1", unanswered_port), timeout_s=0.1, ssl_context=None)
