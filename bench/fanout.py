"""Fan-out benchmark: two wsgate nodes, two python-socketio servers (AsyncRedisManager) and two Node.js socket.io 4.8
servers (@socket.io/redis-adapter), each system on its own fresh processes, one private Redis.

    python -m bench.fanout [--quick] [--clients 5000] [--runs 3] [--systems ours,socketio,socketio_node]
                           [--only connects] [--json bench/out/fanout.json]

The same raw WebSocket load generator connects the same number of clients to each system, half on each server, then
warms the system up (broadcasts and one-user pushes, not measured), then measures: broadcast deliveries per second and
server CPU per 1,000 deliveries; at a fixed rate, pushes to one user whose session is on the other server (p50/p99,
server CPU per 1,000 pushes, Redis CPU per push); RSS per idle authenticated session; connects per second. Each system
takes pushes its own way: wsnode through POST /api/v1/push (one-user pushes stored unless --no-latency-store),
python-socketio through its write-only Redis manager, Node socket.io through server.js's POST /push.
The summary holds the medians of --runs runs. Output ends with `fanout_ratio=<ours/python-socketio>` and, last,
`node_vs_socketio_node=<ours/Node socket.io>` (broadcast deliveries/s ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import jwt

from bench import fanout_node, fanout_stats, procstat
from bench.fanout_push import NodePusher, SocketioPusher
from bench.wsproto_min import client_handshake, frame, parse_frames
from harness import ManagedProcess, ProcessGroup, RedisInfo, delete_prefix, free_port, provide_redis, redis_answers

SECRET = "bench-secret-0123456789abcdef0123456789"
API_KEY = "bench-key"
SYSTEMS = ("ours", "socketio", "socketio_node")
T = TypeVar("T")


class FanoutClient(asyncio.Protocol):
    """A client of either system: counts deliveries, records latency of timed messages, answers pings."""

    def __init__(self, system: str, path: str, host: str, user: str, sink: Stats) -> None:
        self.system, self.user, self.sink = system, user, sink
        self.sio = system != "ours"
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
        if self.sio:
            if payload == b"2":  # Engine.IO 4: the server pings, the client answers "3"
                self.send_text(b"3")
            elif payload.startswith(b"0{"):  # Engine.IO open; then connect to namespace "/" with auth
                self.send_text(b"40" + auth_for(self.system, self.user))
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


def token_for(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def path_for(system: str, user: str) -> str:
    if system != "ours":
        return "/socket.io/?EIO=4&transport=websocket"
    return f"/websocket?token={token_for(user)}"


def auth_for(system: str, user: str) -> bytes:
    """The socket.io connect packet's auth: the Node server checks a JWT as our node does; bench.sio_server does not."""
    if system == "socketio_node":
        return json.dumps({"token": token_for(user)}, separators=(",", ":")).encode()
    return json.dumps({"user": user}, separators=(",", ":")).encode()


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


Push = Callable[[dict[str, Any], dict[str, Any], bool], Awaitable[None]]


@contextlib.asynccontextmanager
async def pusher_for(system: str, ports: list[int], args: argparse.Namespace, redis_url: str,
                     channel: str) -> Any:
    """`push(to, data, store)` for `system`, with the same number of pushes in flight for every system."""
    if system == "socketio":
        sio_pusher = SocketioPusher(redis_url, channel, in_flight=args.in_flight)

        async def push_sio(to: dict[str, Any], data: dict[str, Any], store: bool) -> None:
            await sio_pusher.push(to["users"][0] if "users" in to else None, data)  # socket.io stores nothing

        try:
            yield push_sio
        finally:
            await sio_pusher.close()
        return
    http = NodePusher(ports[0], API_KEY, in_flight=args.in_flight,
                      path="/api/v1/push" if system == "ours" else "/push")
    await http.start()

    async def push_http(to: dict[str, Any], data: dict[str, Any], store: bool) -> None:
        if system == "socketio_node":  # io.to(room).emit or io.emit; nothing stored
            await http.push({"room": to["users"][0] if "users" in to else None, "event": "message", "data": data})
            return
        # A broadcast is never stored (CONTRACT); `store` only matters for a push to users.
        await http.push({"to": to, "module": "bench", "event": "tick", "data": data, "store": store})

    try:
        yield push_http
    finally:
        http.close()


def redis_cpu_seconds(redis_info: RedisInfo) -> float:
    """Redis's own user + system CPU seconds (INFO cpu), so a Redis in another process tree counts too."""
    import redis

    client = redis.Redis(host=redis_info.host, port=redis_info.port)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_user_pushes(push: Push, sink: Stats, user: str, count: int, args: argparse.Namespace,
                          store: bool) -> None:
    """`count` pushes to `user` at --push-rate, waiting (up to --timeout-s) until they are all delivered."""
    done = sink.expect(count)

    async def one(i: int) -> None:
        await push({"users": [user]}, {"i": i, "t0": time.perf_counter()}, store)

    await paced(args.push_rate, count, one)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, args.timeout_s)


async def broadcasts(push: Push, sink: Stats, count: int, clients: int, args: argparse.Namespace) -> None:
    done = sink.expect(count * clients)
    for i in range(count):
        await push({"all": True}, {"n": i}, False)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, args.timeout_s)


async def run_system(system: str, procs: list[ManagedProcess], ports: list[int], args: argparse.Namespace,
                     redis_info: RedisInfo, channel: str) -> dict[str, Any]:
    sink = Stats()

    def server_cpu() -> float:
        return sum(procstat.cpu_seconds(p.pid) for p in procs)

    base_rss = sum(procstat.rss_bytes(p.pid) for p in procs)
    users = [f"u{i}" for i in range(args.clients)]
    start = time.perf_counter()
    clients = await connect_clients(system, ports, users, sink)
    connect_s = time.perf_counter() - start
    idle_rss = sum(procstat.rss_bytes(p.pid) for p in procs) - base_rss
    print(f"{system:9} {len(clients)} clients connected; RSS per idle session {idle_rss / len(clients) / 1024:.1f} KiB",
          flush=True)
    if args.only == "connects":
        return connects_only(system, clients, connect_s, idle_rss)
    target_user = users[1]  # its session is on the second server; pushes go through the first
    store = args.latency_store and system == "ours"
    try:
        async with pusher_for(system, ports, args, redis_info.url, channel) as push:
            # Warm-up, not measured: a production server has run its code paths (and Node's JIT has compiled them).
            await broadcasts(push, sink, args.warmup_broadcasts, len(clients), args)
            await one_user_pushes(push, sink, target_user, args.warmup_pushes, args, store)
            warm_lost = sink.lost

            cpu0, start = server_cpu(), time.perf_counter()
            await broadcasts(push, sink, args.broadcasts, len(clients), args)
            elapsed, broadcast_cpu = time.perf_counter() - start, server_cpu() - cpu0
            delivered = sink.deliveries
            print(f"{system:9} broadcast: {delivered}/{args.broadcasts * len(clients)} deliveries in {elapsed:.2f}s = "
                  f"{delivered / elapsed:.0f}/s", flush=True)

            count = int(args.push_rate * args.latency_s)
            sink.latencies_s.clear()
            cpu0, redis0 = server_cpu(), redis_cpu_seconds(redis_info)
            each0 = [procstat.cpu_seconds(p.pid) for p in procs]
            await one_user_pushes(push, sink, target_user, count, args, store)
            push_cpu, push_redis_cpu = server_cpu() - cpu0, redis_cpu_seconds(redis_info) - redis0
            each = [procstat.cpu_seconds(p.pid) - c for p, c in zip(procs, each0, strict=True)]
        lat = list(sink.latencies_s)
        kind = "store:true" if store else "not stored"
        print(f"{system:9} one-user push ({kind}) at {args.push_rate}/s: {len(lat)}/{count} received, "
              f"p50 {percentile_ms(lat, 0.5):.2f} ms, p99 {percentile_ms(lat, 0.99):.2f} ms", flush=True)
        # The first server takes the pushes, the second holds the session: each one's share tells which side a
        # change moved.
        print(f"{system:9} server CPU ms per 1,000 pushes by server (pushing, holding): "
              + ", ".join(f"{c * 1e6 / max(len(lat), 1):.0f}" for c in each), flush=True)
        figures = fanout_stats.phase_figures(
            clients=len(clients), connect_s=connect_s, idle_rss_bytes=idle_rss, deliveries=delivered,
            broadcast_s=elapsed, broadcast_cpu_s=broadcast_cpu, pushes=len(lat), push_cpu_s=push_cpu,
            push_redis_cpu_s=push_redis_cpu)
        print(f"{system:9} connects {figures['connects_per_s']:.0f}/s; server CPU "
              f"{figures['cpu_ms_per_1k_deliveries']:.1f} ms per 1,000 deliveries, "
              f"{figures['cpu_ms_per_1k_pushes']:.0f} ms per 1,000 pushes; Redis CPU "
              f"{figures['redis_cpu_us_per_push']:.1f} us per push", flush=True)
        return {"system": system, "clients": len(clients), **figures,
                "broadcast_deliveries": delivered, "broadcast_expected": args.broadcasts * len(clients),
                "latency_received": len(lat), "latency_expected": count, "stored": store,
                "p50_ms": percentile_ms(lat, 0.5), "p99_ms": percentile_ms(lat, 0.99), "lost": sink.lost,
                "lost_during_warmup": warm_lost}
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()


def connects_only(system: str, clients: list[FanoutClient], connect_s: float, idle_rss: float) -> dict[str, Any]:
    """`--only connects`: the connect phase's figures (the other phases' are NaN); closes the clients."""
    figures = fanout_stats.phase_figures(clients=len(clients), connect_s=connect_s, idle_rss_bytes=idle_rss,
                                         deliveries=0, broadcast_s=0.0, broadcast_cpu_s=0.0, pushes=0,
                                         push_cpu_s=0.0, push_redis_cpu_s=0.0)
    print(f"{system:9} connects {figures['connects_per_s']:.0f}/s", flush=True)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    return {"system": system, "clients": len(clients), **figures}


def start_system(system: str, group: ProcessGroup, ports: list[int], redis_url: str, prefix: str, channel: str,
                 tag: str) -> list[ManagedProcess]:
    """Fresh servers of `system`, ready to take clients."""
    if system == "ours":
        procs = [group.python(f"node-{tag}-{i}", "wsnode", "--host", "127.0.0.1", "--port", str(p), "--node-id",
                              f"bench-{i}", "--redis", redis_url, "--redis-prefix", prefix, "--jwt-secret", SECRET,
                              "--api-key", API_KEY,
                              # No per-request access log or per-session INFO lines: the socket.io servers log nothing.
                              env={"WSNODE_LOG_LEVEL": "WARNING"})
                 for i, p in enumerate(ports)]
    elif system == "socketio":
        procs = [group.python(f"sio-{tag}-{i}", "bench.sio_server", "--port", str(p), "--redis", redis_url,
                              "--channel", channel)
                 for i, p in enumerate(ports)]
    else:
        procs = fanout_node.start_servers(group, ports, redis_url=redis_url, key=channel, jwt_secret=SECRET,
                                          api_key=API_KEY, tag=tag)
    for proc, port in zip(procs, ports, strict=True):
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
    return procs


def stop_quickly(procs: list[ManagedProcess]) -> None:
    """SIGTERM to all at once, SIGKILL after 1 s: python-socketio's servers linger 5 s on SIGTERM, and a measured
    server has nothing left to save."""
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        p.stop(timeout_s=1.0)


async def run(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> dict[str, Any]:
    runs: list[dict[str, dict[str, Any]]] = []
    for n in range(args.runs):
        if args.runs > 1:
            print(f"--- run {n + 1}/{args.runs}", flush=True)
        results: dict[str, dict[str, Any]] = {}
        for system in fanout_stats.run_order(args.systems, n):
            prefix = f"wsgate-bench-{uuid.uuid4().hex[:8]}:"
            channel = f"wsgate-bench-{system}-{uuid.uuid4().hex[:8]}"
            ports = [free_port(), free_port()]
            procs = start_system(system, group, ports, redis_info.url, prefix, channel, f"{n}")
            try:
                results[system] = await run_system(system, procs, ports, args, redis_info, channel)
            finally:
                stop_quickly(procs)
                delete_prefix(redis_info, prefix)
        runs.append(results)
    medians: dict[str, Any] = {s: fanout_stats.median_runs([r[s] for r in runs]) for s in args.systems}
    return {**medians, "runs": runs}


@contextlib.contextmanager
def bench_redis(workdir: Path) -> Iterator[RedisInfo]:
    """A private redis-server, so Redis CPU per push counts this benchmark alone; else the shared one."""
    binary = shutil.which("redis-server")
    if binary is None:
        with provide_redis(workdir) as (info, _):
            yield info
        return
    group = ProcessGroup(workdir / "redis")
    port = free_port()
    proc = group.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
                                 "no", "--dir", str(workdir)])
    try:
        deadline = time.monotonic() + 10
        while not redis_answers("127.0.0.1", port):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on {port}:\n{proc.log()}")
            time.sleep(0.05)  # polling a process we started for readiness; no event to wait on
        yield RedisInfo("127.0.0.1", port)
    finally:
        group.stop_all()


def run_with_redis(make: Callable[[ProcessGroup, RedisInfo], Coroutine[Any, Any, T]]) -> T:
    """Run `make(group, redis)` on uvloop with a private Redis; every process it starts is stopped at the end, and
    their logs are printed when it fails."""
    workdir = Path(tempfile.mkdtemp(prefix="wsgate-fanout-"))
    group = ProcessGroup(workdir / "logs")
    try:
        import uvloop

        with bench_redis(workdir) as redis_info:
            return uvloop.run(make(group, redis_info))
    except BaseException:
        print(group.logs()[-8000:], file=sys.stderr)
        raise
    finally:
        group.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of 1,000 clients, short phases")
    parser.add_argument("--clients", type=int, default=5000, help="clients per system")
    parser.add_argument("--runs", type=int, default=3, help="runs per system; the summary holds their medians")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--warmup-broadcasts", type=int, default=10)
    parser.add_argument("--warmup-pushes", type=int, default=2000, help="one-user pushes before measuring")
    parser.add_argument("--push-rate", type=float, default=2000.0, help="one-user pushes per second")
    parser.add_argument("--latency-s", type=float, default=3.0)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=16, help="pushes in flight at once (every system)")
    parser.add_argument("--latency-store", action=argparse.BooleanOptionalAction, default=True,
                        help="one-user pushes to our nodes with store:true (the API default) or store:false")
    parser.add_argument("--only", choices=["connects"],
                        help="measure only the connect phase (connects/s and RSS per idle session), e.g. to compare "
                             "two versions of the connect path")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems takes some of {', '.join(SYSTEMS)}")
    if args.quick:
        args.clients, args.broadcasts, args.latency_s, args.runs = min(args.clients, 1000), 5, 1.0, 1
        args.warmup_broadcasts, args.warmup_pushes = min(args.warmup_broadcasts, 2), min(args.warmup_pushes, 500)
    results = run_with_redis(lambda group, redis_info: run(args, group, redis_info))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    for line in fanout_stats.summary_lines(results, SYSTEMS):
        print(line)
    for label, peer in (("fanout_ratio", "socketio"), ("node_vs_socketio_node", "socketio_node")):
        if "ours" in results and peer in results:
            ratio = fanout_stats.ratio(results["ours"]["deliveries_per_s"], results[peer]["deliveries_per_s"])
            print(f"{label}={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
