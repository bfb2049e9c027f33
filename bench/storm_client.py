"""The reconnect storm's client process: its share of the users, each one connection through the gateway, driven by
JSON lines on stdin (from bench.storm) and answering on stdout.

    python -m bench.storm_client --gateway-port P --first I --clients N --deadline T   (bench.storm starts it)

Each user connects and reconnects as wsgate.js does (bench.storm.backoff_delay_s, a 10 s budget per attempt, `since=`
the last id received) and records every attempt and every id it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import jwt

from bench.storm import CONNECT_TIMEOUT_S, LINE_LIMIT, OK, SECRET, Trace, backoff_delay_s
from bench.wsproto_min import client_handshake, frame, parse_frames


@dataclass
class User:
    """A user's current connection and every id it has received across its connections (duplicates kept)."""

    name: str
    node: str = ""
    seen: list[str] = field(default_factory=list)
    client: StormClient | None = None
    news: asyncio.Event | None = None  # set on every message, for whoever waits for ids to arrive

    @property
    def last_id(self) -> str | None:
        return self.seen[-1] if self.seen else None


class StormClient(asyncio.Protocol):
    """One browser-like connection: handshake, welcome, messages (ids recorded on the user), pings answered."""

    def __init__(self, head: bytes, user: User) -> None:
        self.head, self.user = head, user
        self.buf = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.upgraded_f: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[str] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.head)

    def connection_lost(self, exc: Exception | None) -> None:
        for future, what in ((self.upgraded_f, "101"), (self.ready, "welcome")):
            if not future.done():
                future.set_exception(ConnectionError(f"closed before the {what}"))
                future.exception()  # the attempt awaits only the first; no warning for the other
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                if not self.upgraded_f.done():
                    self.upgraded_f.set_exception(ConnectionError(f"http {bytes(self.buf[9:12]).decode('latin-1')}"))
                assert self.transport is not None
                self.transport.close()
                return
            del self.buf[:end + 4]
            self.upgraded = True
            self.upgraded_f.set_result(None)
        for opcode, payload, _ in parse_frames(self.buf):
            if opcode == 0x9 and self.transport is not None:
                self.transport.write(frame(payload, opcode=0xA, mask=True))
            elif opcode == 0x1:
                message = json.loads(payload)
                if message.get("type") == "welcome" and not self.ready.done():
                    self.ready.set_result(str(message.get("node")))
                elif message.get("type") == "message":
                    self.user.seen.append(str(message["id"]))
                    if self.user.news is not None:
                        self.user.news.set()


async def open_client(port: int, user: User, phase: list[str]) -> None:
    """Connect `user` through the gateway (since= its last id) and wait for the welcome; raises on failure.
    `phase` says how far it got: the TCP connection, the 101, the welcome."""
    token = jwt.encode({"sub": user.name, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    path = f"/ws/websocket?token={token}" + (f"&since={user.last_id}" if user.last_id else "")
    head, _ = client_handshake(path, f"127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    phase[0] = "TCP connection"
    transport, proto = await loop.create_connection(lambda: StormClient(head, user), "127.0.0.1", port)
    try:
        phase[0] = "101"
        await proto.upgraded_f
        phase[0] = "welcome"
        user.node = await proto.ready
    except BaseException:
        transport.close()
        raise
    user.client = proto


async def attempt_kind(port: int, user: User) -> str:
    """One connect attempt: OK, or what went wrong. As in wsgate.js, an attempt that hangs fails after 10 s."""
    phase = [""]
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await open_client(port, user, phase)
        return OK
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return f"no {phase[0]} within {CONNECT_TIMEOUT_S:.0f} s"
    except ConnectionError as exc:
        return str(exc) or type(exc).__name__
    except OSError as exc:
        return type(exc).__name__


async def reconnect(port: int, user: User, trace: Trace, deadline: float, rng: random.Random) -> None:
    """wsgate.js's _scheduleReconnect: full-jitter capped exponential backoff before every attempt until a welcome."""
    attempt = 0
    while True:
        delay = backoff_delay_s(attempt, rng.random())
        if time.monotonic() + delay > deadline:
            return  # out of time: the trace ends on a failure (or with no attempt) and is reported as unretried
        await asyncio.sleep(delay)
        kind = await attempt_kind(port, user)
        trace.attempts.append((time.monotonic(), kind))
        if kind == OK:
            return
        attempt += 1


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def client_process(port: int, first: int, count: int, deadline: float) -> None:
    """Connect users [first, first+count), report where they landed, then follow the orchestrator's commands."""
    rng = random.Random(first)
    users = [User(f"storm{i}") for i in range(first, first + count)]
    for start in range(0, count, 100):  # in batches, so no listen backlog overflows while the cluster fills
        batch = users[start:start + 100]
        kinds = await asyncio.gather(*(attempt_kind(port, u) for u in batch))
        for user, kind in zip(batch, kinds, strict=True):
            if kind != OK:  # before the storm, a failed connect backs off the same way
                await reconnect(port, user, Trace(user.name, time.monotonic()), deadline, rng)
    emit({"event": "ready", "placed": {u.name: u.node for u in users if u.client is not None}})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    command = json.loads(await reader.readline())
    victim = command["victim"]
    traces: list[Trace] = []
    waiting = {u.name for u in users if u.node == victim}
    if not waiting:
        emit({"event": "all_back", "t": time.monotonic()})

    async def follow(user: User) -> None:
        while user.client is not None and time.monotonic() < deadline:
            await user.client.lost
            user.client = None
            trace = Trace(user.name, time.monotonic())
            traces.append(trace)
            await reconnect(port, user, trace, deadline, rng)
            if user.client is not None and user.name in waiting:
                waiting.discard(user.name)
                if not waiting:
                    emit({"event": "all_back", "t": time.monotonic()})

    tasks = [asyncio.create_task(follow(u)) for u in users]
    command = json.loads(await reader.readline())
    expected: dict[str, str] = command["expect"]
    settle_by = min(deadline, time.monotonic() + command["settle_s"])
    by_name = {u.name: u for u in users}
    news = asyncio.Event()
    for user in users:
        user.news = news
    while True:
        news.clear()
        left_s = settle_by - time.monotonic()
        if left_s <= 0 or all(i in by_name[u].seen for u, i in expected.items()):
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(news.wait(), left_s)
    for task in tasks:
        task.cancel()
    for user in users:
        if user.client is not None and user.client.transport is not None:
            user.client.transport.close()
    affected = {t.user for t in traces} | set(expected)
    emit({"event": "report", "traces": [asdict(t) for t in traces],
          "seen": {u.name: u.seen for u in users if u.name in affected or u.seen}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway-port", type=int, required=True)
    parser.add_argument("--first", type=int, required=True, help="the first user's number")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="time.monotonic() after which nobody retries")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets
    import uvloop

    uvloop.run(client_process(args.gateway_port, args.first, args.clients, args.deadline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
