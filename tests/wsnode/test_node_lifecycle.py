"""Functional tests of the node's life: Consul registration and drain, slow consumers, token expiry, Redis loss."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
from typing import Any

import aiohttp
import pytest

from harness import ProcessGroup, free_port
from tests.conftest import start_devconsul
from tests.wsnode.conftest import WITH_KEY, Connect, StartNode, api_get, eventually, make_token, push


async def _consul_service(http: aiohttp.ClientSession, address: str, name: str) -> list[dict[str, Any]]:
    async with http.get(f"http://{address}/v1/health/service/{name}") as resp:
        assert resp.status == 200
        result: list[dict[str, Any]] = await resp.json()
        return result


async def test_node_registers_in_consul_as_passing_and_leaves_before_closing_clients(
        start_node: StartNode, procs: ProcessGroup, connect: Connect, http: aiohttp.ClientSession) -> None:
    consul = str(start_devconsul(procs).extra["address"])
    a = start_node("node-a", "--consul", consul, "--service-name", "ws-test", "--tags", "push,v1")

    async def passing() -> list[dict[str, Any]]:
        entries = await _consul_service(http, consul, "ws-test")
        return [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]

    entry = (await eventually(passing, timeout_s=10))[0]
    service = entry["Service"]
    assert (service["ID"], service["Port"], service["Address"]) == ("ws-test-node-a", a.port, "127.0.0.1")
    assert service["Meta"]["node_id"] == "node-a" and set(service["Tags"]) == {"push", "v1"}
    client, _ = await connect(a, "xena")
    a.proc.signal(signal.SIGTERM)
    assert await client.closed_with(timeout_s=10) == 1001
    # By the time the client is told to go away, the node is no longer offered by Consul.
    assert await _consul_service(http, consul, "ws-test") == []
    assert a.proc.wait_exit(timeout_s=10) == 0
    _, presence = await api_get(http, start_node("node-b"), "/api/v1/users/xena/presence")
    assert presence["sessions"] == []


async def test_node_registers_again_when_the_agent_forgets_it(
        start_node: StartNode, procs: ProcessGroup, http: aiohttp.ClientSession) -> None:
    consul = str(start_devconsul(procs).extra["address"])
    start_node("node-a", "--consul", f"http://{consul}")

    async def registered() -> bool:
        return bool(await _consul_service(http, consul, "ws-service"))

    await eventually(registered, timeout_s=10)
    async with http.put(f"http://{consul}/v1/agent/service/deregister/ws-service-node-a") as resp:
        assert resp.status == 200
    await eventually(registered, timeout_s=10)


async def test_slow_consumer_is_closed_4008(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--send-queue-max", "4")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", a.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /websocket?token={make_token('yuri')} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await loop.sock_sendall(sock, request.encode())
    try:
        head = await asyncio.wait_for(loop.sock_recv(sock, 200), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        _, presence = await api_get(http, a, "/api/v1/users/yuri/presence")
        assert len(presence["sessions"]) == 1
        big = "x" * 200_000
        for _ in range(60):  # never read: the node's queue for this session fills up
            status, _body = await push(http, a, {"to": {"users": ["yuri"]}, "module": "m", "data": big,
                                                 "store": False})
            assert status == 202
            _, presence = await api_get(http, a, "/api/v1/users/yuri/presence")
            if not presence["sessions"]:
                break

        async def closed() -> bool:
            async with http.get(f"{a.url}/metrics", headers=WITH_KEY) as resp:
                text = await resp.text()
            return "wsnode_slow_consumer_closes_total 1.0" in text and 'wsnode_closes_total{code="4008"}' in text

        await eventually(closed)

        async def forgotten() -> bool:
            _, presence = await api_get(http, a, "/api/v1/users/yuri/presence")
            return presence["sessions"] == []

        await eventually(forgotten)
    finally:
        sock.close()


async def test_session_is_closed_1008_when_its_token_expires(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a")
    token = make_token("zoe", exp_in_s=2)
    async with http.ws_connect(a.ws_url, params={"token": token}) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        msg = await ws.receive(timeout=6)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008


async def test_push_api_answers_503_when_redis_is_unreachable(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    a = start_node("node-a", "--redis", dead, wait=False)
    a.proc.wait_http_ready(f"{a.url}/health", expect=(503,))
    status, body = await push(http, a, {"to": {"users": ["u"]}, "module": "m"})
    assert status == 503 and "redis" in body["error"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(a.ws_url, params={"token": make_token("u")})
    assert info.value.status == 503


@pytest.mark.parametrize(("args", "message"), [
    ((), "--port"),
    (("--port", "0", "--jwt-secret", "s"), "--port"),
    (("--port", "1234"), "no way to authenticate"),
])
def test_bad_settings_exit_2_with_a_message(procs: ProcessGroup, args: tuple[str, ...], message: str) -> None:
    env = {k: "" for k in ("WSNODE_PORT", "WSNODE_JWT_SECRET", "WSNODE_JWT_PUBLIC_KEY", "WSNODE_ALLOW_ANONYMOUS")}
    proc = procs.python("bad", "wsnode", *args, env=env)
    assert proc.wait_exit(timeout_s=10) == 2
    assert message in proc.log()


async def test_a_peer_that_stops_answering_pings_is_dropped(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--heartbeat", "0.4")
    async with http.ws_connect(a.ws_url, params={"token": make_token("dead")}, autoping=False) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        kinds = set()
        while True:  # pings arrive and are never answered, until the node gives up on this peer
            msg = await ws.receive(timeout=5)
            kinds.add(msg.type)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
        assert aiohttp.WSMsgType.PING in kinds

    async def forgotten() -> bool:
        _, presence = await api_get(http, a, "/api/v1/users/dead/presence")
        return presence["sessions"] == []

    await eventually(forgotten)


def test_node_listens_with_a_backlog_for_a_reconnect_storm(start_node: StartNode) -> None:
    # A listening socket's Send-Q in `ss -ltn` is its accept backlog. aiohttp's default (128) overflowed when a dead
    # node's clients all came back at once (`python -m bench.storm`).
    import subprocess
    from pathlib import Path

    from wsnode.app import LISTEN_BACKLOG

    node = start_node("node-backlog")
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{node.port}"], capture_output=True, text=True,
                             check=True).stdout.split()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(listing[2]) == min(LISTEN_BACKLOG, somaxconn) > 128
