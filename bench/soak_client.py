"""One load-generator process of the soak: holds its share of WebSocket clients and counts what they receive.

    python -m bench.soak_client --port P --count N --index I --secret S [--ping-interval-s 5]

Run by `bench.soak` (one process per <= 2,500 connections: a process may hold at most 20,000 files). It connects
`count` clients as users `w<I>-<n>` to the gateway's `/ws-svc/websocket` (a refused handshake is retried with
jittered backoff, as real clients do), prints `READY {"connected", "failed": [n...], "seconds"}`, then sends an
app-level ping from every client each interval and answers server pings, until a `STOP` line on stdin. Then it
closes every connection with a close handshake and prints `REPORT <json>`: unexpected closes, pings and pongs,
and the pushes each user received (`unicast`) and how many clients got each broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter, defaultdict
from typing import Any, cast

import jwt
import uvloop

from bench.wsproto_min import client_handshake, frame, parse_frames

CONNECT_CONCURRENCY = 50
CONNECT_ATTEMPTS = 5  # a refused handshake (503 while the nodes' backlogs overflow) is retried, as clients do
PING = frame(b'{"type":"ping"}', opcode=0x1, mask=True)
CLOSE = frame(b"\x03\xe8", opcode=0x8, mask=True)


class Tally:
    """What one load-generator process saw."""

    def __init__(self) -> None:
        self.stopping = False
        self.unexpected_closes = 0
        self.close_codes: Counter[int] = Counter()
        self.pings = 0
        self.pongs = 0
        self.unicast: defaultdict[str, list[int]] = defaultdict(list)
        self.broadcast: Counter[int] = Counter()
        self.bad_frames = 0
        self.connect_retries = 0
        self.last_ping_sent = False
        self.answered = asyncio.Event()  # set once pings stopped and every ping has its pong


class SoakClient(asyncio.Protocol):
    """One client: upgrade, welcome, then count messages and pongs; answer server pings."""

    def __init__(self, user: str, path: str, host: str, tally: Tally) -> None:
        self.user, self.tally = user, tally
        self.head, _ = client_handshake(path, host)
        self.buf = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ready.done() and not self.ready.exception() and not self.tally.stopping:
            self.tally.unexpected_closes += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost before welcome"))
        if not self.lost.done():
            self.lost.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(bytes(self.buf[:end]).decode("latin-1")))
                return
            del self.buf[:end + 4]
            self.upgraded = True
        for opcode, payload, _ in parse_frames(self.buf):
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x9:
                self.write(frame(payload, opcode=0xA, mask=True))
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.tally.close_codes[code] += 1
                self.write(CLOSE)
                assert self.transport is not None
                self.transport.close()

    def on_text(self, payload: bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(payload)
        except ValueError:
            self.tally.bad_frames += 1
            return
        kind = message.get("type")
        if kind == "message":
            n = int(message["data"]["n"])
            if message.get("event") == "b":
                self.tally.broadcast[n] += 1
            else:
                self.tally.unicast[self.user].append(n)
        elif kind == "pong":
            self.tally.pongs += 1
            if self.tally.last_ping_sent and self.tally.pongs >= self.tally.pings:
                self.tally.answered.set()
        elif kind == "ping":
            self.write(frame(b'{"type":"pong"}', opcode=0x1, mask=True))
        elif kind == "welcome" and not self.ready.done():
            self.ready.set_result(None)

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.tally.pings += 1
            self.transport.write(PING)


def token_path(user: str, secret: str, lifetime_s: int) -> str:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + lifetime_s}, secret, algorithm="HS256")
    return f"/ws-svc/websocket?token={token}"


async def connect_all(args: argparse.Namespace, tally: Tally) -> tuple[list[SoakClient], list[int]]:
    """Open the clients with bounded concurrency and retries; returns (those welcomed, indices that failed)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    host = f"127.0.0.1:{args.port}"

    async def one(n: int) -> SoakClient | None:
        user = f"w{args.index}-{n}"
        for attempt in range(CONNECT_ATTEMPTS):
            async with gate:
                try:
                    _, client = await loop.create_connection(
                        lambda: SoakClient(user, token_path(user, args.secret, args.token_lifetime_s), host, tally),
                        "127.0.0.1", args.port)
                    await asyncio.wait_for(client.ready, 60)
                    return client
                except (OSError, TimeoutError) as exc:
                    reason = str(exc).partition("\r\n")[0]
                    print(f"connect {user} attempt {attempt + 1} failed: {reason}", file=sys.stderr, flush=True)
                    tally.connect_retries += 1
            await asyncio.sleep(random.uniform(0.5, 2.0) * (attempt + 1))  # back off with jitter, as clients do
        tally.connect_retries -= 1
        return None

    results = await asyncio.gather(*(one(n) for n in range(args.count)))
    clients = [c for c in results if c is not None]
    return clients, [n for n, c in enumerate(results) if c is None]


async def ping_loop(clients: list[SoakClient], interval_s: float) -> None:
    """Every client pings once per interval, spread evenly over it in 50 ms steps."""
    step_s = 0.05
    per_step = max(1, round(len(clients) * step_s / interval_s))
    i = 0
    while True:
        for _ in range(per_step):
            clients[i % len(clients)].ping()
            i += 1
        await asyncio.sleep(step_s)  # pacing the load, not synchronising


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    started = time.monotonic()
    clients, failed = await connect_all(args, tally)
    print("READY " + json.dumps({"connected": len(clients), "failed": failed,
                                  "seconds": round(time.monotonic() - started, 1)}), flush=True)
    pinger = asyncio.ensure_future(ping_loop(clients, args.ping_interval_s)) if clients else None
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while (line := await reader.readline()) and line.strip() != b"STOP":
        pass
    if pinger is not None:
        pinger.cancel()
    # Answers to the last pings are still on their way: give them a moment, bounded.
    tally.last_ping_sent = True
    if tally.pongs < tally.pings:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tally.answered.wait(), 3)
    tally.stopping = True
    for client in clients:
        client.write(CLOSE)
    done, pending = await asyncio.wait([c.lost for c in clients], timeout=15) if clients else (set(), set())
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return {"index": args.index, "connected": len(clients), "connect_failed": len(failed),
            "connect_retries": tally.connect_retries,
            "unexpected_closes": tally.unexpected_closes, "close_codes": dict(tally.close_codes),
            "pings": tally.pings, "pongs": tally.pongs, "unicast": dict(tally.unicast),
            "broadcast": dict(tally.broadcast), "bad_frames": tally.bad_frames, "close_timeouts": len(pending),
            "closed_cleanly": len(done)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the gateway's port")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--ping-interval-s", type=float, default=5.0)
    parser.add_argument("--token-lifetime-s", type=int, default=3600)
    args = parser.parse_args(argv)
    report = uvloop.run(run(args))
    print("REPORT " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
