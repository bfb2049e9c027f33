"""A WebSocket load generator on raw uvloop sockets: round trips, handshakes and idle connections.

Each connection keeps one message in flight (send, await the echo, repeat), so round trips per second and latency
come from the same run. Every loop is bounded in time and count and targets loopback only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import cast

from bench.wsproto_min import client_handshake, frame, parse_frames


class HandshakeError(RuntimeError):
    """The relay did not answer 101."""


class ClientProtocol(asyncio.Protocol):
    """One client connection: handshake, then counted echoes."""

    def __init__(self, path: str, host: str) -> None:
        self.head, self.accept = client_handshake(path, host)
        self.buf = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.echo: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only compatible with it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.head)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[:end + 4]
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self.upgraded.set_exception(HandshakeError(head.split(b"\r\n", 1)[0].decode("latin-1")))
                return
            self.upgraded.set_result(None)
        for opcode, _payload, _ in parse_frames(self.buf):
            if opcode == 0x8:
                if not self.closed.done():
                    self.closed.set_result(None)
            elif self.echo is not None and not self.echo.done():
                self.echo.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for fut in (self.upgraded, self.echo):
            if fut is not None and not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    async def round_trip(self, message: bytes) -> None:
        assert self.transport is not None
        self.echo = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        await self.echo

    async def close(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(frame(b"\x03\xe8", opcode=0x8, mask=True))
            try:
                await asyncio.wait_for(self.closed, 5)
            finally:
                self.transport.close()


async def connect(host: str, port: int, path: str) -> ClientProtocol:
    """Open and upgrade one client connection."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(lambda: ClientProtocol(path, f"{host}:{port}"), host, port)
    await asyncio.wait_for(proto.upgraded, 10)
    return proto


@dataclass
class RoundTrips:
    """What a round-trip run measured."""

    count: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_round_trips(host: str, port: int, path: str, *, size_bytes: int, connections: int,
                          duration_s: float, max_messages: int = 5_000_000) -> RoundTrips:
    """`connections` clients each echo `size_bytes` messages for `duration_s` (or until max_messages)."""
    clients = await asyncio.gather(*(connect(host, port, path) for _ in range(connections)))
    message = frame(b"x" * size_bytes, opcode=0x2, mask=True)
    result = RoundTrips()
    for c in clients:  # warm up every tunnel once
        await c.round_trip(message)
    deadline = time.perf_counter() + duration_s
    start = time.perf_counter()

    async def worker(client: ClientProtocol) -> None:
        perf = time.perf_counter
        while result.count < max_messages:
            t0 = perf()
            if t0 >= deadline:
                return
            await client.round_trip(message)
            result.latencies_s.append(perf() - t0)
            result.count += 1

    await asyncio.gather(*(worker(c) for c in clients))
    result.elapsed_s = time.perf_counter() - start
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return result


async def run_handshakes(host: str, port: int, path: str, *, concurrency: int, duration_s: float,
                         max_handshakes: int = 200_000) -> tuple[int, float]:
    """Open, upgrade and close connections as fast as `concurrency` loops can; returns (count, seconds)."""
    count = 0
    deadline = time.perf_counter() + duration_s
    start = time.perf_counter()

    async def loop_() -> None:
        nonlocal count
        while time.perf_counter() < deadline and count < max_handshakes:
            client = await connect(host, port, path)
            await client.close()
            count += 1

    await asyncio.gather(*(loop_() for _ in range(concurrency)))
    return count, time.perf_counter() - start


async def open_idle(host: str, port: int, path: str, *, count: int, batch: int = 200) -> list[ClientProtocol]:
    """Open `count` upgraded connections that then stay idle."""
    clients: list[ClientProtocol] = []
    while len(clients) < count:
        n = min(batch, count - len(clients))
        clients += await asyncio.gather(*(connect(host, port, path) for _ in range(n)))
    return clients
