"""The fault proxy itself, over real sockets: each fault does what the fault tests rely on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.faultproxy import DROP, PASS, STALL, FaultProxy, _parse_command, delay

# How long "nothing arrives" is watched for; a negative check needs some bound.
QUIET_S = 0.3


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    """A proxy in front of an echo server."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as fault_proxy:
        yield fault_proxy
    server.close()
    await server.wait_closed()


async def _close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _open(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                      *, timeout_s: float = 5.0) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout_s)


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    assert await _round_trip(reader, writer, b"hello") == b"hello"
    await _close(writer)


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_delay_applies_to_one_direction_and_keeps_order(proxy: FaultProxy, direction: str) -> None:
    reader, writer = await _open(proxy)
    assert await _round_trip(reader, writer, b"1") == b"1"
    proxy.set(**{direction: delay(0.4)})  # type: ignore[arg-type]
    started = time.monotonic()
    writer.write(b"a")
    writer.write(b"b")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2), 5.0) == b"ab"
    assert time.monotonic() - started >= 0.4
    await _close(writer)


async def test_stall_forwards_nothing_until_healed_then_everything(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    assert await _round_trip(reader, writer, b"1") == b"1"
    proxy.set(up=STALL, down=STALL)
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(1), QUIET_S)
    proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 5.0) == b"held"
    await _close(writer)


async def test_heal_for_new_connections_keeps_the_old_one_stalled(proxy: FaultProxy) -> None:
    old_reader, old_writer = await _open(proxy)
    assert await _round_trip(old_reader, old_writer, b"1") == b"1"  # its link exists in the proxy
    proxy.set(down=STALL)
    proxy.set(down=PASS, existing=False)
    new_reader, new_writer = await _open(proxy)
    assert await _round_trip(new_reader, new_writer, b"new") == b"new"
    old_writer.write(b"old")
    await old_writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(old_reader.readexactly(1), QUIET_S)
    await _close(old_writer, new_writer)


async def test_new_connections_while_stalled_are_accepted_and_silent(proxy: FaultProxy) -> None:
    proxy.set(up=STALL, down=STALL)
    reader, writer = await _open(proxy)
    writer.write(b"x")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(1), QUIET_S)
    await _close(writer)


async def test_drop_discards_what_comes_meanwhile(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    assert await _round_trip(reader, writer, b"1") == b"1"
    proxy.set(up=DROP)
    writer.write(b"lost")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(1), QUIET_S)
    proxy.heal()
    assert await _round_trip(reader, writer, b"after") == b"after"
    await _close(writer)


async def test_reset_aborts_open_connections(proxy: FaultProxy) -> None:
    reader, writer = await _open(proxy)
    assert await _round_trip(reader, writer, b"1") == b"1"
    proxy.reset()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5.0)
    await _close(writer)


@pytest.mark.parametrize(("line", "expected"), [
    ("stall", ("set", {"up": STALL, "down": STALL}, True)),
    ("stall up", ("set", {"up": STALL}, True)),
    ("delay down 2", ("set", {"down": delay(2.0)}, True)),
    ("pass new", ("set", {"up": PASS, "down": PASS}, False)),
    ("drop down", ("set", {"down": DROP}, True)),
    ("reset", ("reset", {}, True)),
])
def test_command_line_commands(line: str, expected: object) -> None:
    assert _parse_command(line.split()) == expected
