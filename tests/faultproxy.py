"""A userspace TCP fault proxy for tests: put it between a node and Redis (or the gateway and a node) and break the
link the way networks break, without netem.

    proxy = FaultProxy("127.0.0.1", 6379)
    await proxy.start()                      # listens on 127.0.0.1:proxy.port
    proxy.set(down=delay(2.0))               # replies from Redis 2 s late (pipelined: latency, not throughput)
    proxy.set(up=STALL, down=STALL)          # silent partition: nothing forwarded, nothing reset, sockets stay up
    proxy.set(up=PASS, down=PASS, existing=False)  # heal for new connections only: the old ones stay stalled
    proxy.reset()                            # every open connection gets a TCP reset on both sides
    await proxy.close()

Faults, per direction (`up`: client -> upstream, `down`: upstream -> client):
- `PASS`: forward as it comes;
- `delay(s)`: forward each chunk `s` seconds after it arrived, in order;
- `STALL`: stop reading and forwarding (what arrives stays in kernel buffers, as on a link that dropped every packet
  while TCP retransmits); forwarding resumes, nothing lost, when the direction is healed;
- `DROP`: read and discard (a blackhole for new data; the stream is corrupt afterwards, as a protocol sees it).

`set(..., existing=True)` (the default) changes open connections and new ones; `existing=False` only new ones, which
is how "the link came back but the old connection stayed stalled" is made. New connections are accepted even while
stalled (their bytes then go nowhere), as a silent drop behind a load balancer looks to a client.

Also a command-line tool for trying faults by hand: `python -m tests.faultproxy --listen 127.0.0.1:7000
--upstream 127.0.0.1:6379`, then type `stall`, `stall up`, `delay down 2`, `drop`, `pass`, `reset`, `pass new`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Fault:
    """What one direction of a connection does with the bytes it reads."""

    kind: str  # pass | delay | stall | drop
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("pass", "delay", "stall", "drop"):
            raise ValueError(f"unknown fault {self.kind!r}")
        if self.kind == "delay" and self.delay_s <= 0:
            raise ValueError("a delay must be positive")


PASS = Fault("pass")
STALL = Fault("stall")
DROP = Fault("drop")


def delay(seconds: float) -> Fault:
    """Forward every chunk `seconds` after it arrived (one direction's latency)."""
    return Fault("delay", seconds)


class _Pipe:
    """One direction of one connection: a reader task and a writer task with a queue of (due time, chunk)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault,
                 on_done: asyncio.Event) -> None:
        self.reader = reader
        self.writer = writer
        self.fault = fault
        self.changed = asyncio.Event()
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.done = on_done
        self.forwarded = 0

    def set(self, fault: Fault) -> None:
        self.fault = fault
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def _unstalled(self) -> None:
        while self.fault.kind == "stall":
            await self.changed.wait()

    async def read_loop(self) -> None:
        try:
            while True:
                await self._unstalled()  # a stalled direction reads nothing: the sender's buffers fill
                data = await self.reader.read(_CHUNK)
                if not data:
                    break
                if self.fault.kind == "drop":
                    continue
                due = time.monotonic() + (self.fault.delay_s if self.fault.kind == "delay" else 0.0)
                self.queue.put_nowait((due, data))
        except (ConnectionError, OSError):
            pass
        self.queue.put_nowait((0.0, b""))  # EOF after what is queued

    async def write_loop(self) -> None:
        try:
            while True:
                due, data = await self.queue.get()
                await self._unstalled()  # what was read before the stall is held too
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._unstalled()
                if not data:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.writer.write(data)
                await self.writer.drain()
                self.forwarded += len(data)
        except (ConnectionError, OSError):
            self.done.set()


class _Link:
    """A proxied connection: client <-> proxy <-> upstream."""

    def __init__(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter], up: Fault, down: Fault) -> None:
        self.client_writer = client[1]
        self.upstream_writer = upstream[1]
        self.failed = asyncio.Event()
        self.stopped = asyncio.Event()
        self.up = _Pipe(client[0], upstream[1], up, self.failed)
        self.down = _Pipe(upstream[0], client[1], down, self.failed)

    async def run(self) -> None:
        tasks: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(coro) for coro in (self.up.read_loop(), self.up.write_loop(),
                                                     self.down.read_loop(), self.down.write_loop())]
        ends: list[asyncio.Future[Any]] = [asyncio.ensure_future(asyncio.gather(tasks[1], tasks[3])),
                                           asyncio.ensure_future(self.failed.wait()),
                                           asyncio.ensure_future(self.stopped.wait())]
        try:
            # Both directions ended (EOF each way), one write failed (the peer reset), or the proxy closes.
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, *ends]:
                task.cancel()
            await asyncio.gather(*tasks, *ends, return_exceptions=True)
            self.close()

    def close(self) -> None:
        for writer in (self.client_writer, self.upstream_writer):
            writer.close()

    def reset(self) -> None:
        """Abort both sides with a TCP reset (SO_LINGER 0)."""
        for writer in (self.client_writer, self.upstream_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    """Listens on `host:port` (0: a free port) and forwards every connection to `upstream_host:upstream_port`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._up = PASS
        self._down = PASS
        self.accepted = 0
        self._closing = False

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """`redis://host:port/0` for a node's --redis (the proxy does not care what it carries)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def open_connections(self) -> int:
        """Connections currently proxied."""
        return len(self._links)

    async def start(self) -> FaultProxy:
        """Start listening."""
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        return self

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def set(self, *, up: Fault | None = None, down: Fault | None = None, existing: bool = True) -> None:
        """Change the fault of one or both directions, for new connections and (unless `existing=False`) open ones."""
        self._up = up or self._up
        self._down = down or self._down
        if existing:
            for link in self._links:
                if up is not None:
                    link.up.set(up)
                if down is not None:
                    link.down.set(down)

    def heal(self, *, existing: bool = True) -> None:
        """Both directions PASS again (for open connections too unless `existing=False`)."""
        self.set(up=PASS, down=PASS, existing=existing)

    def reset(self) -> None:
        """Reset every open connection on both sides."""
        for link in list(self._links):
            link.reset()

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        self._closing = True
        # Not cancelled: asyncio logs a cancelled connection callback as an error. A connection accepted just before
        # the listener closed may still be dialing upstream: stopped as soon as its link exists.
        while self._tasks:
            for link in list(self._links):
                link.stopped.set()
            await asyncio.wait(list(self._tasks), timeout=0.1)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                writer.transport.abort()
                return
            link = _Link((reader, writer), upstream, self._up, self._down)
            self._links.add(link)
            if self._closing:
                link.stopped.set()
            try:
                await link.run()
            finally:
                self._links.discard(link)
        finally:
            self._tasks.discard(task)


def _parse_command(words: list[str]) -> tuple[str, dict[str, Fault], bool]:
    """A CLI command as (action, faults by direction, existing)."""
    existing = True
    if words and words[-1] == "new":
        existing, words = False, words[:-1]
    if not words:
        raise ValueError("empty command")
    action, rest = words[0], words[1:]
    if action == "reset":
        return "reset", {}, existing
    if action == "delay":
        if len(rest) != 2:
            raise ValueError("delay up|down SECONDS")
        return "set", {rest[0]: delay(float(rest[1]))}, existing
    fault = {"pass": PASS, "stall": STALL, "drop": DROP}.get(action)
    if fault is None:
        raise ValueError(f"unknown command {action!r}")
    directions = rest or ["up", "down"]
    return "set", {direction: fault for direction in directions}, existing


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faultproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    up_host, _, up_port = args.upstream.rpartition(":")
    proxy = await FaultProxy(up_host, int(up_port), host=host, port=int(port)).start()
    print(f"listening on {proxy.host}:{proxy.port} -> {args.upstream}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        try:
            action, faults, existing = _parse_command(line.split())
        except ValueError as exc:
            print(f"? {exc}", flush=True)
            continue
        if action == "reset":
            proxy.reset()
        else:
            proxy.set(up=faults.get("up"), down=faults.get("down"), existing=existing)
        print(f"ok ({proxy.open_connections} open)", flush=True)
    await proxy.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
