"""Reconnect storm: a node is SIGKILLed and all of its clients come back through one gateway to the other node.

    python -m bench.storm [--quick] [--clients 10000] [--json bench/out/storm.json]

Two nodes registered in the dev Consul agent, one gateway with two workers in front (`lb:ws://`), N clients through
it. One node is killed; its clients reconnect the way wsgate.js does (uniform jitter, then exponential backoff on a
failed attempt) with `since=` their last id. Meanwhile a backend pushes stored messages to those users through the
surviving node. Reported: the time until every dropped client is back, the handshake rate, failed attempts by kind,
and the pushes answered 202 that never reached their user (must be 0). Last line: `storm_reconnect_s=<seconds>`.
Traffic goes to loopback only; every loop is bounded in count and time.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import jwt

from bench.scaleout import GATEWAY_ROUTES, run_with_own_redis
from bench.wsproto_min import client_handshake, frame, parse_frames
from harness import ProcessGroup, RedisInfo, delete_prefix, free_port

SECRET = "bench-secret-0123456789abcdef0123456789"
API_KEY = "bench-key"
SERVICE = "storm-ws"


@dataclass
class Outcome:
    """What the storm cost."""

    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    back_at: list[float] = field(default_factory=list)

    def failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


class StormClient(asyncio.Protocol):
    """One browser-like client: handshake, then messages (ids remembered), pings answered."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.buf = bytearray()
        self.upgraded = False
        self.node = ""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ids: set[str] = set()
        self.last_id: str | None = None
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
                status = bytes(self.buf[9:12]).decode("latin-1")
                self.ready.set_exception(ConnectionError(f"http {status}"))
                assert self.transport is not None
                self.transport.close()
                return
            del self.buf[:end + 4]
            self.upgraded = True
        for opcode, payload, _ in parse_frames(self.buf):
            if opcode == 0x9 and self.transport is not None:
                self.transport.write(frame(payload, opcode=0xA, mask=True))
            elif opcode == 0x1:
                self.on_text(payload)

    def on_text(self, payload: bytes) -> None:
        message = json.loads(payload)
        if message.get("type") == "welcome":
            self.node = str(message.get("node"))
            if not self.ready.done():
                self.ready.set_result(None)
        elif message.get("type") == "message":
            self.ids.add(str(message["id"]))
            self.last_id = str(message["id"])


@dataclass
class User:
    """A user's current connection and every id it has seen across its connections."""

    name: str
    client: StormClient | None = None
    seen: set[str] = field(default_factory=set)
    last_id: str | None = None


async def open_client(port: int, user: User) -> StormClient:
    token = jwt.encode({"sub": user.name, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    path = f"/ws/websocket?token={token}" + (f"&since={user.last_id}" if user.last_id else "")
    head, _ = client_handshake(path, f"127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    _transport, proto = await loop.create_connection(lambda: StormClient(head), "127.0.0.1", port)
    try:
        await asyncio.wait_for(proto.ready, 10)
    except BaseException:
        _transport.close()
        raise
    return proto


def _settle(user: User) -> None:
    if user.client is not None:
        user.seen |= user.client.ids
        user.last_id = user.client.last_id or user.last_id


async def reconnect(port: int, user: User, outcome: Outcome, *, jitter_s: float, deadline: float) -> None:
    """wsgate.js's rule: wait a random part of the jitter window, then retry with doubling backoff (max 2 s)."""
    _settle(user)
    await asyncio.sleep(random.uniform(0, jitter_s))
    backoff = 0.1
    while time.monotonic() < deadline:
        outcome.attempts += 1
        try:
            user.client = await open_client(port, user)
            outcome.back_at.append(time.monotonic())
            return
        except ConnectionRefusedError:
            outcome.failed("refused")
        except ConnectionError as exc:
            outcome.failed(str(exc) or "reset")
        except (OSError, TimeoutError) as exc:
            outcome.failed(type(exc).__name__)
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        backoff = min(backoff * 2, 2.0)
    raise TimeoutError(f"{user.name} did not come back")


async def pusher(node_port: int, users: list[User], accepted: dict[str, set[str]], stop: asyncio.Event,
                 rate_per_s: float) -> None:
    """Stored pushes to the storm's users through the surviving node, paced; records what was answered 202."""
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        n = 0
        while not stop.is_set():
            user = users[n % len(users)]
            n += 1
            body = {"to": {"users": [user.name]}, "module": "storm", "data": {"n": n}}
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(f"http://127.0.0.1:{node_port}/api/v1/push", json=body,
                                     headers=headers) as response:
                    if response.status == 202:
                        accepted.setdefault(user.name, set()).add((await response.json())["ids"][user.name])
            await asyncio.sleep(1 / rate_per_s)


async def run(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> dict[str, Any]:
    prefix = f"wsgate-storm-{uuid.uuid4().hex[:8]}:"
    consul_port = free_port()
    group.python("devconsul", "devconsul", "--port", str(consul_port)).wait_http_ready(
        f"http://127.0.0.1:{consul_port}/v1/status/leader")
    nodes = {}
    for node_id in ("storm-a", "storm-b"):
        port = free_port()
        proc = group.python(node_id, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
                            "--redis", redis_info.url, "--redis-prefix", prefix, "--jwt-secret", SECRET,
                            "--api-key", API_KEY, "--consul", f"127.0.0.1:{consul_port}", "--service-name", SERVICE,
                            "--consul-check-interval", "1", "--send-queue-max", "10000",
                            env={"WSNODE_LOG_LEVEL": "WARNING"})
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
        nodes[node_id] = (proc, port)
    gateway_port = free_port()
    config = group.log_dir.parent / "storm-gateway.yaml"
    config.write_text(GATEWAY_ROUTES.format(port=gateway_port, consul_port=consul_port, service=SERVICE))
    group.python("gateway", "gateway", "--config", str(config), "--workers", str(args.workers),
                 "--log-level", "WARNING").wait_http_ready(f"http://127.0.0.1:{gateway_port}/actuator/health")

    users = [User(f"storm{i}") for i in range(args.clients)]
    deadline = time.monotonic() + args.timeout_s
    for start in range(0, len(users), 200):  # in batches, so the listen backlog never overflows
        batch = users[start:start + 200]
        clients = await asyncio.gather(*(open_client(gateway_port, u) for u in batch))
        for user, client in zip(batch, clients, strict=True):
            user.client = client
    placed = {node_id: sum(1 for u in users if u.client and u.client.node == node_id) for node_id in nodes}
    print(f"{args.clients} clients through the gateway: {placed}", flush=True)

    victim, survivor = "storm-a", "storm-b"
    dropped = [u for u in users if u.client is not None and u.client.node == victim]
    accepted: dict[str, set[str]] = {}
    stop = asyncio.Event()
    push_task = asyncio.create_task(pusher(nodes[survivor][1], dropped, accepted, stop, args.push_rate))
    outcome = Outcome()
    killed_at = time.monotonic()
    nodes[victim][0].kill()

    async def come_back(user: User) -> None:
        assert user.client is not None
        await user.client.lost
        await reconnect(gateway_port, user, outcome, jitter_s=args.jitter_s, deadline=deadline)

    await asyncio.gather(*(come_back(u) for u in dropped))
    storm_s = max(outcome.back_at) - killed_at if outcome.back_at else 0.0
    await asyncio.sleep(0.5)  # pushes already on their way when the last client came back
    stop.set()
    await push_task

    async def everything_arrived() -> int:
        missing = 0
        for user in dropped:
            _settle(user)
            missing += len(accepted.get(user.name, set()) - user.seen)
        return missing

    settle_deadline = time.monotonic() + 10
    missing = await everything_arrived()
    while missing and time.monotonic() < settle_deadline:
        await asyncio.sleep(0.2)
        missing = await everything_arrived()
    delete_prefix(redis_info, prefix)
    return {"clients": args.clients, "gateway_workers": args.workers, "dropped": len(dropped), "placed": placed,
            "reconnect_s": round(storm_s, 3), "handshakes_per_s": round(len(dropped) / storm_s, 1) if storm_s else 0,
            "attempts": outcome.attempts, "failures": outcome.failures, "jitter_s": args.jitter_s,
            "pushes_accepted": sum(len(v) for v in accepted.values()), "pushes_lost": missing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 clients (development)")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--jitter-s", type=float, default=1.0, help="clients spread their first retry over this")
    parser.add_argument("--push-rate", type=float, default=200.0, help="stored pushes per second during the storm")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients = min(args.clients, 1000)
    if args.clients < 2 or args.workers < 1:
        parser.error("--clients must be at least 2 and --workers at least 1")
    # Children inherit the raised soft limit: the client side and each process hold thousands of sockets.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = run_with_own_redis("wsgate-storm-", lambda group, redis_info: run(args, group, redis_info))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(f"storm_reconnect_s={result['reconnect_s']}")
    return 0 if result["pushes_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
