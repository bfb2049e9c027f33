"""Reconnect storm: a node is SIGKILLed and all of its clients come back through one gateway to the other node.

    python -m bench.storm [--quick] [--clients 10000] [--json bench/out/storm.json]

Two nodes registered in the dev Consul agent, one gateway with two workers in front (`lb:ws://`), N clients through
it, spread over a few client processes (each process holds at most --per-process sockets, well under the 20,000
open files a process may have). One node is SIGKILLed; its clients reconnect the way wsgate.js does: the n-th attempt
after a loss waits a uniform random time in [0, min(15 s, 0.5 s * 2^n)] (full jitter), gives up on an attempt after
10 s without a welcome, and resumes with `since=` their last id. During the storm a backend pushes one stored message
to each dropped user through the surviving node. Reported: the time from the kill until every dropped client is back,
the handshake rate, failed attempts by kind (each must be retried), every push answered 202 must reach its user
exactly once after dedupe by id, and the CPU each process used during the storm. Last line:
`storm_reconnect_s=<seconds>`. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt

from bench import procstat
from bench.scaleout import GATEWAY_ROUTES, run_with_own_redis
from bench.wsproto_min import client_handshake, frame, parse_frames
from harness import ProcessGroup, RedisInfo, delete_prefix, free_port

SECRET = "bench-secret-0123456789abcdef0123456789"
API_KEY = "bench-key"
SERVICE = "storm-ws"
# wsgate.js DEFAULTS: backoffBaseMs, backoffMaxMs, connectTimeoutMs.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 15.0
CONNECT_TIMEOUT_S = 10.0
OK = ""  # the kind of a successful attempt
LINE_LIMIT = 1 << 24  # the JSON lines between the orchestrator and its client processes list thousands of users


def backoff_delay_s(attempt: int, u: float, *, base_s: float = BACKOFF_BASE_S, max_s: float = BACKOFF_MAX_S) -> float:
    """wsgate.js backoffDelayMs: attempt `attempt` (0-based) waits u * min(max, base * 2^attempt), u in [0, 1)."""
    return u * min(max_s, base_s * 2.0 ** min(attempt, 30))


@dataclass
class Trace:
    """One loss of one client and the attempts that followed: (time the attempt ended, OK or the failure's kind)."""

    user: str
    lost_at: float
    attempts: list[tuple[float, str]] = field(default_factory=list)

    @property
    def back_at(self) -> float | None:
        return self.attempts[-1][0] if self.attempts and self.attempts[-1][1] == OK else None


def summarize(traces: Sequence[Trace], killed_at: float) -> dict[str, Any]:
    """The storm's figures from every client's trace; times are seconds after the kill."""
    back = sorted(b for t in traces if (b := t.back_at) is not None)
    failures = Counter(kind for t in traces for _, kind in t.attempts if kind != OK)
    # A failed attempt is retried when the same loss has a later attempt; the last one failing means given up.
    unretried = sum(1 for t in traces if t.attempts and t.attempts[-1][1] != OK)
    never_tried = sum(1 for t in traces if not t.attempts)
    span_s = back[-1] - killed_at if back else 0.0
    per_second = Counter(int(b - killed_at) for b in back)
    return {
        "dropped": len(traces), "back": len(back), "all_back": len(back) == len(traces),
        "reconnect_s": round(span_s, 3),
        "first_back_s": round(back[0] - killed_at, 3) if back else None,
        "median_back_s": round(back[len(back) // 2] - killed_at, 3) if back else None,
        "handshakes_per_s": round(len(back) / span_s, 1) if span_s > 0 else 0.0,
        "peak_handshakes_per_s": max(per_second.values(), default=0),
        "handshakes_per_second": [per_second.get(s, 0) for s in range(int(span_s) + 1)] if back else [],
        "attempts": sum(len(t.attempts) for t in traces),
        "failures": dict(sorted(failures.items())),
        "failed_retried": sum(failures.values()) - unretried,
        "failed_unretried": unretried, "never_tried": never_tried,
    }


def check_delivery(expected: Mapping[str, str], seen: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each expected id must be among its user's received ids; after dedupe by id, nothing else may be there."""
    missing = sum(1 for user, id_ in expected.items() if id_ not in seen.get(user, ()))
    unexpected = sum(1 for user, ids in seen.items() for id_ in set(ids) if expected.get(user) != id_)
    duplicates = sum(len(ids) - len(set(ids)) for ids in seen.values())
    return {"pushes_lost": missing, "unexpected_ids": unexpected, "duplicates_dropped": duplicates}


def split_range(count: int, parts: int) -> list[tuple[int, int]]:
    """[first, count) slices of `count` users over `parts` processes, sizes differing by at most one."""
    size, extra = divmod(count, parts)
    out, first = [], 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append((first, n))
        first += n
    return [s for s in out if s[1] > 0]


# ---- client process: its share of the users, driven by JSON lines on stdin, answering on stdout ----

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
        self.ready: asyncio.Future[str] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before the welcome"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"http {bytes(self.buf[9:12]).decode('latin-1')}"))
                assert self.transport is not None
                self.transport.close()
                return
            del self.buf[:end + 4]
            self.upgraded = True
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


async def open_client(port: int, user: User) -> None:
    """Connect `user` through the gateway (since= its last id) and wait for the welcome; raises on failure."""
    token = jwt.encode({"sub": user.name, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    path = f"/ws/websocket?token={token}" + (f"&since={user.last_id}" if user.last_id else "")
    head, _ = client_handshake(path, f"127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    transport, proto = await asyncio.wait_for(
        loop.create_connection(lambda: StormClient(head, user), "127.0.0.1", port), CONNECT_TIMEOUT_S)
    try:
        user.node = await asyncio.wait_for(proto.ready, CONNECT_TIMEOUT_S)
    except BaseException:
        transport.close()
        raise
    user.client = proto


async def attempt_kind(port: int, user: User) -> str:
    """One connect attempt: OK, or what went wrong."""
    try:
        await open_client(port, user)
        return OK
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return f"no welcome within {CONNECT_TIMEOUT_S:.0f} s"
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


# ---- orchestrator ----

async def push_all(node_port: int, users: list[str], batch: int) -> dict[str, str]:
    """One stored push per user through the surviving node, `batch` users per request; the ids answered 202."""
    accepted: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        for start in range(0, len(users), batch):
            names = users[start:start + batch]
            body = {"to": {"users": names}, "module": "storm", "data": {"batch": start}}
            for _ in range(3):  # a backend retries on 503 (the node sheds while it is busy)
                async with http.post(f"http://127.0.0.1:{node_port}/api/v1/push", json=body,
                                     headers=headers) as response:
                    if response.status == 202:
                        ids = (await response.json())["ids"]
                        accepted.update({n: str(ids[n]) for n in names})
                        break
    return accepted


def cpu_sample(pids: Mapping[str, int]) -> dict[str, float]:
    out = {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}
    out["orchestrator (pushes)"] = time.process_time()
    return out


async def read_event(proc: asyncio.subprocess.Process, name: str, timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
    if not line:
        raise RuntimeError(f"client process {proc.pid} exited (rc {await proc.wait()}) before '{name}'")
    event = json.loads(line)
    if event.get("event") != name:
        raise RuntimeError(f"client process {proc.pid}: expected '{name}', got {event.get('event')}")
    return cast(dict[str, Any], event)


def send(proc: asyncio.subprocess.Process, command: dict[str, Any]) -> None:
    assert proc.stdin is not None
    proc.stdin.write((json.dumps(command) + "\n").encode())


async def run(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> dict[str, Any]:
    prefix = f"wsgate-storm-{uuid.uuid4().hex[:8]}:"
    consul_port = free_port()
    consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
    consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
    nodes = {}
    for node_id in ("storm-a", "storm-b"):
        port = free_port()
        node = group.python(node_id, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
                            "--redis", redis_info.url, "--redis-prefix", prefix, "--jwt-secret", SECRET,
                            "--api-key", API_KEY, "--consul", f"127.0.0.1:{consul_port}", "--service-name", SERVICE,
                            "--consul-check-interval", "1", "--send-queue-max", "10000",
                            env={"WSNODE_LOG_LEVEL": "WARNING"})
        node.wait_http_ready(f"http://127.0.0.1:{port}/health")
        nodes[node_id] = (node, port)
    gateway_port = free_port()
    config = group.log_dir.parent / "storm-gateway.yaml"
    config.write_text(GATEWAY_ROUTES.format(port=gateway_port, consul_port=consul_port, service=SERVICE))
    gateway = group.python("gateway", "gateway", "--config", str(config), "--workers", str(args.workers),
                           "--log-level", "WARNING")
    gateway.wait_http_ready(f"http://127.0.0.1:{gateway_port}/actuator/health")

    deadline = time.monotonic() + args.timeout_s
    slices = split_range(args.clients, max(1, math.ceil(args.clients / args.per_process)))
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.storm", "--client-process", "--gateway-port", str(gateway_port),
        "--first", str(first), "--clients", str(count), "--deadline", repr(deadline),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT) for first, count in slices]
    try:
        return await storm(args, procs, slices, group, nodes, {"gateway": gateway.pid, "devconsul": consul.pid},
                           deadline)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        delete_prefix(redis_info, prefix)


async def storm(args: argparse.Namespace, procs: list[asyncio.subprocess.Process], slices: list[tuple[int, int]],
                group: ProcessGroup, nodes: Mapping[str, tuple[Any, int]], pids: dict[str, int],
                deadline: float) -> dict[str, Any]:
    placed_by: dict[str, str] = {}
    for proc in procs:
        placed_by.update((await read_event(proc, "ready", deadline - time.monotonic()))["placed"])
    placed = dict(sorted(Counter(placed_by.values()).items()))
    print(f"{args.clients} clients through the gateway ({len(procs)} client processes): {placed}", flush=True)
    if len(placed_by) != args.clients:
        raise RuntimeError(f"only {len(placed_by)} of {args.clients} clients connected before the storm")
    victim, survivor = "storm-a", "storm-b"
    dropped = sorted(u for u, n in placed_by.items() if n == victim)
    pids |= {f"node {survivor} (survivor)": nodes[survivor][0].pid}
    pids |= {p.name: p.pid for p in group.processes if p.name == "redis"}
    pids |= {f"client process {i}": p.pid for i, p in enumerate(procs)}
    for proc in procs:
        send(proc, {"victim": victim})
    await asyncio.gather(*(p.stdin.drain() for p in procs if p.stdin is not None))
    cpu_before = cpu_sample(pids)
    killed_at = time.monotonic()
    nodes[victim][0].kill()
    pushes = asyncio.create_task(push_all(nodes[survivor][1], dropped, args.push_batch))
    pushed_at: list[float] = []
    pushes.add_done_callback(lambda _: pushed_at.append(time.monotonic()))
    backs = await asyncio.gather(*(read_event(p, "all_back", deadline - time.monotonic()) for p in procs),
                                 return_exceptions=True)
    cpu_after = cpu_sample(pids)
    window_s = time.monotonic() - killed_at
    accepted = await pushes
    for proc, (first, count) in zip(procs, slices, strict=True):
        mine = {u: i for u, i in accepted.items() if first <= int(u.removeprefix("storm")) < first + count}
        send(proc, {"expect": mine, "settle_s": args.settle_s})
    reports = [await read_event(p, "report", max(1.0, deadline - time.monotonic()) + args.settle_s) for p in procs]
    traces = [Trace(t["user"], t["lost_at"], [(a, k) for a, k in t["attempts"]]) for r in reports for t in r["traces"]]
    seen = {u: ids for r in reports for u, ids in r["seen"].items()}
    summary = summarize(traces, killed_at)
    delivery = check_delivery(accepted, {u: seen.get(u, []) for u in set(seen) | set(accepted)})
    cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before}
    return {"clients": args.clients, "gateway_workers": args.workers, "client_processes": len(procs),
            "placed": placed, **summary, "expected_drops": len(dropped),
            "others_dropped": sum(1 for t in traces if placed_by.get(t.user) != victim),
            "all_back_events": sum(1 for b in backs if isinstance(b, dict)),
            "within_10s": summary["all_back"] and summary["reconnect_s"] <= 10.0,
            "jitter_s": BACKOFF_BASE_S, "backoff": f"full jitter, base {BACKOFF_BASE_S} s, max {BACKOFF_MAX_S} s",
            "pushes_accepted": len(accepted), "pushes_refused": len(dropped) - len(accepted),
            "pushes_done_s": round(pushed_at[0] - killed_at, 3), **delivery,
            "cpu_window_s": round(window_s, 2), "cpu_s": cpu,
            "cpu_cores": {name: round(s / window_s, 2) for name, s in cpu.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 clients (development)")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--per-process", type=int, default=4000, help="client sockets per client process at most")
    parser.add_argument("--push-batch", type=int, default=50, help="users per push request during the storm")
    parser.add_argument("--settle-s", type=float, default=10.0, help="how long pushes may take to arrive after")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gateway-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Children inherit the raised soft limit: the client side and each process hold thousands of sockets.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.client_process:
        import uvloop

        uvloop.run(client_process(args.gateway_port, args.first, args.clients, args.deadline))
        return 0
    if args.quick:
        args.clients = min(args.clients, 1000)
    if args.clients < 2 or args.workers < 1 or args.per_process < 1 or args.push_batch < 1:
        parser.error("--clients must be at least 2; --workers, --per-process and --push-batch at least 1")
    result = run_with_own_redis("wsgate-storm-", lambda group, redis_info: run(args, group, redis_info))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(f"storm_reconnect_s={result['reconnect_s']}")
    ok = (result["all_back"] and result["failed_unretried"] == 0 and result["never_tried"] == 0
          and result["pushes_lost"] == 0 and result["unexpected_ids"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
