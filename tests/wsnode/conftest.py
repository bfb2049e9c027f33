"""Fixtures for wsnode tests: real node processes against the test Redis prefix, tokens, WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis

from harness import ManagedProcess, ProcessGroup, RedisInfo, free_port, redis_answers, redis_server_binary

SECRET = "test-secret-0123456789-abcdefghijkl"
API_KEY = "key-one"
API_KEY_2 = "key-two"
# /metrics and the detailed /health need a key on the public port (CONTRACT section 8).
WITH_KEY = {"Authorization": f"Bearer {API_KEY}"}
# Short expiries and heartbeats keep the tests fast.
FAST = ("--session-ttl", "2", "--session-refresh", "0.5", "--heartbeat", "5", "--stream-claim-idle", "1",
        "--drain-delay", "0.3", "--consul-check-interval", "1")


def make_token(user: str, *, secret: str = SECRET, exp_in_s: float | None = 3600, **claims: Any) -> str:
    """An HS256 client token for `user`."""
    body: dict[str, Any] = {"sub": user, **claims}
    if exp_in_s is not None:
        body["exp"] = int(time.time() + exp_in_s)
    return jwt.encode(body, secret, algorithm="HS256")


@dataclass
class NodeProc:
    """A running node process."""

    proc: ManagedProcess
    node_id: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"


StartNode = Callable[..., NodeProc]


@pytest.fixture
def start_node(procs: ProcessGroup, redis_server: RedisInfo, redis_prefix: str) -> StartNode:
    """Start `python -m wsnode` on a free port with the test's Redis prefix; waits until /health is UP."""

    def start(name: str, *extra: str, env: Mapping[str, str] | None = None, wait: bool = True) -> NodeProc:
        port = free_port()
        proc = procs.python(name, "wsnode", "--port", str(port), "--host", "127.0.0.1", "--node-id", name,
                            "--redis", redis_server.url, "--redis-prefix", redis_prefix, "--jwt-secret", SECRET,
                            "--api-key", f"{API_KEY},{API_KEY_2}", *FAST, *extra, env=env)
        if wait:
            proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
        return NodeProc(proc=proc, node_id=name, port=port)

    return start


@pytest.fixture
async def own_redis(procs: ProcessGroup) -> AsyncIterator[aioredis.Redis]:
    """A client of a fresh redis-server on a free port (no persistence)."""
    binary = redis_server_binary()
    port = free_port()
    proc = procs.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no"])
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(redis_answers, "127.0.0.1", port):
        assert proc.alive(), proc.log()
        assert time.monotonic() < deadline, f"redis-server did not answer on {port}"
        await asyncio.sleep(0.02)
    client = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP/WebSocket client session."""
    async with aiohttp.ClientSession() as session:
        yield session


class Client:
    """A test WebSocket client that collects frames and waits for them with a deadline."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._index = 0

    async def next(self, *, timeout_s: float = 5.0) -> dict[str, Any]:
        """The next JSON frame."""
        msg = await self.ws.receive(timeout=timeout_s)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}")
        frame: dict[str, Any] = json.loads(msg.data)
        self.frames.append(frame)
        return frame

    async def next_of(self, kind: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
        """The next frame of type `kind` (others are kept in `frames`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = await self.next(timeout_s=max(0.01, deadline - time.monotonic()))
            if frame.get("type") == kind:
                return frame

    async def messages(self, count: int, *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The next `count` message frames."""
        return [await self.next_of("message", timeout_s=timeout_s) for _ in range(count)]

    async def send(self, obj: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(obj))

    async def closed_with(self, *, timeout_s: float = 5.0) -> int | None:
        """Read until the close frame; its code."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return int(msg.data)  # the code in the server's close frame
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))


Connect = Callable[..., Any]


@pytest.fixture
async def connect(http: aiohttp.ClientSession) -> AsyncIterator[Connect]:
    """Open a WebSocket to a node as `user` (welcome frame read and returned with the client)."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_ws(node: NodeProc, user: str, *, since: str | None = None,
                      headers: Mapping[str, str] | None = None) -> tuple[Client, dict[str, Any]]:
        params = {"token": make_token(user)}
        if since is not None:
            params["since"] = since
        ws = await http.ws_connect(node.ws_url, params=params, headers=headers, autoping=True)
        opened.append(ws)
        client = Client(ws)
        welcome = await client.next()
        assert welcome["type"] == "welcome", welcome
        return client, welcome

    yield open_ws
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


async def push(http: aiohttp.ClientSession, node: NodeProc, body: Any, *, key: str | None = API_KEY,
               raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """POST /api/v1/push; (status, JSON body)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = raw if raw is not None else json.dumps(body).encode()
    async with http.post(f"{node.url}/api/v1/push", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def api_get(http: aiohttp.ClientSession, node: NodeProc, path: str) -> tuple[int, dict[str, Any]]:
    """GET an API path with the key; (status, JSON body)."""
    async with http.get(f"{node.url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
        return resp.status, await resp.json()


async def eventually(check: Callable[[], Any], *, timeout_s: float = 5.0, interval_s: float = 0.05) -> Any:
    """Poll an async `check` until it returns something truthy; its last value otherwise fails the test."""
    deadline = time.monotonic() + timeout_s
    value: Any = None
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last value {value!r}")
