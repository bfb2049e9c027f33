"""Fan-out benchmark: two wsgate nodes against two python-socketio servers (AsyncRedisManager), one Redis.

    python -m bench.fanout [--quick] [--clients 5000] [--json bench/out/fanout.json]

The same raw WebSocket load generator connects the same number of clients to each system, half on each server. It
measures broadcast deliveries per second, the p50/p99 latency of pushes to one user whose session is on the other
server at a fixed push rate, and RSS per idle authenticated session. Last line: `fanout_ratio=<ours/socketio>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import jwt

from bench import procstat
from bench.fanout_push import NodePusher, SocketioPusher
from bench.wsproto_min import client_handshake, frame, parse_frames
from harness import ManagedProcess, ProcessGroup, RedisInfo, delete_prefix, free_port, provide_redis

SECRET = "bench-secret-0123456789abcdef0123456789"
API_KEY = "bench-key"


class FanoutClient(asyncio.Protocol):
    """A client of either system: counts deliveries, records latency of timed messages, answers pings."""

    def __init__(self, system: str, path: str, host: str, user: str, sink: Stats) -> None:
        self.system, self.user, self.sink = system, user, sink
        self.head, _ = client_handshake(path, host)
        self.buf = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.lost += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("lost before ready"))

    def send_text(self, text: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame(text, opcode=0x1, mask=True))

    def data_received(self, data: bytes) -> None:
        # Fast path for the common case, one whole small unmasked server frame per read: the load generator shares
        # the cores with the servers, so it must cost as little per delivery as possible.
        if self.upgraded and not self.buf and len(data) >= 2 and data[1] < 126 and len(data) == 2 + data[1]:
            if data[0] == 0x81:
                self.on_text(data[2:])
                return
            if data[0] == 0x89:
                assert self.transport is not None
                self.transport.write(frame(data[2:], opcode=0xA, mask=True))
                return
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(ConnectionError(bytes(self.buf[:end]).decode("latin-1")))
                return
            del self.buf[:end + 4]
            self.upgraded = True
        for opcode, payload, _ in parse_frames(self.buf):
            if opcode == 0x9:
                assert self.transport is not None
                self.transport.write(frame(payload, opcode=0xA, mask=True))
            elif opcode == 0x1:
                self.on_text(payload)

    def on_text(self, payload: bytes) -> None:
        if self.system == "socketio":
            if payload == b"2":  # Engine.IO 4: the server pings, the client answers "3"
                self.send_text(b"3")
            elif payload.startswith(b"0{"):  # Engine.IO open; then connect to namespace "/" with auth
                self.send_text(b'40{"user":"' + self.user.encode() + b'"}')
            elif payload.startswith(b"40") and not self.ready.done():
                self.ready.set_result(None)
            elif payload.startswith(b"44") and not self.ready.done():  # connect refused
                self.ready.set_exception(ConnectionError(payload.decode()))
            elif payload.startswith(b"42"):
                self.delivered(payload)
        # The node encodes every server frame with "type" first (CONTRACT section 4); its keep-alive pings are
        # WebSocket ping frames (answered above), not text frames. "unread" frames follow stored messages.
        elif payload.startswith(b'{"type":"message"'):
            self.delivered(payload)
        elif payload.startswith(b'{"type":"welcome"') and not self.ready.done():
            self.ready.set_result(None)

    def delivered(self, payload: bytes) -> None:
        self.sink.deliveries += 1
        if b'"t0"' in payload:
            start = payload.find(b'"t0":') + 5
            end = start
            while payload[end:end + 1] not in (b",", b"}"):
                end += 1
            self.sink.latencies_s.append(time.perf_counter() - float(payload[start:end]))
        if self.sink.target and self.sink.deliveries >= self.sink.target and not self.sink.done.done():
            self.sink.done.set_result(None)


class Stats:
    """Counters shared by a system's clients."""

    def __init__(self) -> None:
        self.deliveries = 0
        self.lost = 0
        self.latencies_s: list[float] = []
        self.target = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def expect(self, total: int) -> asyncio.Future[None]:
        self.deliveries, self.target = 0, total
        self.done = asyncio.get_running_loop().create_future()
        return self.done


def path_for(system: str, user: str) -> str:
    if system == "socketio":
        return "/socket.io/?EIO=4&transport=websocket"
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    return f"/websocket?token={token}"


async def connect_clients(system: str, ports: list[int], users: list[str], sink: Stats) -> list[FanoutClient]:
    loop = asyncio.get_running_loop()
    clients: list[FanoutClient] = []
    for start in range(0, len(users), 250):
        batch = users[start:start + 250]

        async def one(i: int, user: str) -> FanoutClient:
            port = ports[i % len(ports)]
            _, proto = await loop.create_connection(
                lambda: FanoutClient(system, path_for(system, user), f"127.0.0.1:{port}", user, sink),
                "127.0.0.1", port)
            await asyncio.wait_for(proto.ready, 30)
            return proto

        clients += await asyncio.gather(*(one(start + i, u) for i, u in enumerate(batch)))
    return clients


def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def paced(rate_per_s: float, count: int, send: Callable[[int], Awaitable[None]]) -> None:
    """Call `send(i)` `count` times at `rate_per_s`, without waiting for one to finish before the next."""
    start = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    for i in range(count):
        delay = start + i / rate_per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the producer, not synchronising with the system under test
        task = asyncio.ensure_future(send(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)


async def run_system(system: str, procs: list[ManagedProcess], ports: list[int], args: argparse.Namespace,
                     redis_url: str, channel: str) -> dict[str, Any]:
    sink = Stats()
    base_rss = sum(procstat.rss_bytes(p.pid) for p in procs)
    users = [f"u{i}" for i in range(args.clients)]
    clients = await connect_clients(system, ports, users, sink)
    idle_rss = (sum(procstat.rss_bytes(p.pid) for p in procs) - base_rss) / len(clients)
    print(f"{system:9} {len(clients)} clients connected; RSS per idle session {idle_rss / 1024:.1f} KiB", flush=True)

    node_pusher = NodePusher(ports[0], API_KEY, in_flight=args.in_flight) if system == "ours" else None
    sio_pusher = SocketioPusher(redis_url, channel, in_flight=args.in_flight) if system == "socketio" else None
    if node_pusher is not None:
        await node_pusher.start()

    async def push(to: dict[str, Any], data: dict[str, Any], *, store: bool) -> None:
        if sio_pusher is not None:
            await sio_pusher.push(to["users"][0] if "users" in to else None, data)  # socket.io stores nothing
            return
        assert node_pusher is not None
        # A broadcast is never stored (CONTRACT); `store` only matters for a push to users.
        await node_pusher.push({"to": to, "module": "bench", "event": "tick", "data": data, "store": store})

    try:
        broadcasts = args.broadcasts
        done = sink.expect(broadcasts * len(clients))
        start = time.perf_counter()
        for i in range(broadcasts):
            await push({"all": True}, {"n": i}, store=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, args.timeout_s)
        elapsed = time.perf_counter() - start
        delivered = sink.deliveries
        rate = delivered / elapsed
        print(f"{system:9} broadcast: {delivered}/{broadcasts * len(clients)} deliveries in {elapsed:.2f}s = "
              f"{rate:.0f}/s", flush=True)

        # One user, session on the second server, pushed through the first at a fixed rate.
        target_user = users[1]
        sink.latencies_s.clear()
        count = int(args.push_rate * args.latency_s)
        done = sink.expect(count)

        async def one(i: int) -> None:
            await push({"users": [target_user]}, {"i": i, "t0": time.perf_counter()}, store=args.latency_store)

        await paced(args.push_rate, count, one)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, args.timeout_s)
        lat = list(sink.latencies_s)
        kind = "store:true" if args.latency_store and system == "ours" else "not stored"
        print(f"{system:9} one-user push ({kind}) at {args.push_rate}/s: {len(lat)}/{count} received, "
              f"p50 {percentile_ms(lat, 0.5):.2f} ms, p99 {percentile_ms(lat, 0.99):.2f} ms", flush=True)
        return {"system": system, "clients": len(clients), "idle_rss_bytes_per_session": idle_rss,
                "broadcast_deliveries": delivered, "broadcast_expected": broadcasts * len(clients),
                "deliveries_per_s": rate, "latency_received": len(lat), "latency_expected": count,
                "p50_ms": percentile_ms(lat, 0.5), "p99_ms": percentile_ms(lat, 0.99), "lost": sink.lost}
    finally:
        if node_pusher is not None:
            node_pusher.close()
        if sio_pusher is not None:
            await sio_pusher.close()
        for c in clients:
            if c.transport is not None:
                c.transport.close()


async def run(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> dict[str, Any]:
    redis_url = redis_info.url
    prefix = f"wsgate-bench-{uuid.uuid4().hex[:8]}:"
    try:
        return await _run(args, group, redis_url, prefix)
    finally:
        delete_prefix(redis_info, prefix)


async def _run(args: argparse.Namespace, group: ProcessGroup, redis_url: str, prefix: str) -> dict[str, Any]:
    channel = f"wsgate-bench-sio-{uuid.uuid4().hex[:8]}"
    ours_ports, sio_ports = [free_port(), free_port()], [free_port(), free_port()]
    ours = [group.python(f"node-{i}", "wsnode", "--host", "127.0.0.1", "--port", str(p), "--node-id", f"bench-{i}",
                         "--redis", redis_url, "--redis-prefix", prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
                         # No per-request access log or per-session INFO lines: the socket.io servers log nothing.
                         env={"WSNODE_LOG_LEVEL": "WARNING"})
            for i, p in enumerate(ours_ports)]
    sio = [group.python(f"sio-{i}", "bench.sio_server", "--port", str(p), "--redis", redis_url, "--channel", channel)
           for i, p in enumerate(sio_ports)]
    for proc, port in zip(ours + sio, ours_ports + sio_ports, strict=True):
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
    results = {"ours": await run_system("ours", ours, ours_ports, args, redis_url, channel)}
    for p in ours:
        p.stop()
    results["socketio"] = await run_system("socketio", sio, sio_ports, args, redis_url, channel)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clients", type=int, default=5000, help="clients per system")
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--push-rate", type=float, default=2000.0, help="one-user pushes per second")
    parser.add_argument("--latency-s", type=float, default=3.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=16, help="pushes in flight at once (both systems)")
    parser.add_argument("--latency-store", action=argparse.BooleanOptionalAction, default=True,
                        help="one-user pushes to our nodes with store:true (the API default) or store:false")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.broadcasts, args.latency_s = min(args.clients, 1000), 5, 1.0
    workdir = Path(tempfile.mkdtemp(prefix="wsgate-fanout-"))
    group = ProcessGroup(workdir / "logs")
    try:
        import uvloop

        with provide_redis(workdir) as (redis_info, _):
            results = uvloop.run(run(args, group, redis_info))
    except BaseException:
        print(group.logs()[-8000:], file=sys.stderr)
        raise
    finally:
        group.stop_all()
    ratio = results["ours"]["deliveries_per_s"] / max(results["socketio"]["deliveries_per_s"], 1e-9)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(f"fanout_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
