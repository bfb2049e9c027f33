"""The seed route end to end: client -> gateway process -> instances registered in the dev Consul agent."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType

from harness import ProcessGroup, free_port
from tests.gateway.procs import register, set_check, start_gateway_proc, start_upstream_proc

SEED = """\
service:
  uri:
    ws-svc: lb:ws://ws-service
discovery:
  consul:
    address: {consul}
routes:
  - id: ws-svc
    uri: ${{service.uri.ws-svc}}
    predicates:
      - Path=/ws-svc/**
    filters:
      - RewritePath=/ws-svc/(?<path>.*), /$\\{{path}}
"""


async def seed_cluster(procs: ProcessGroup, consul: str, tmp_path: Path, names: tuple[str, ...] = ("one", "two")
                       ) -> tuple[int, dict[str, int]]:
    """Instances registered in Consul and a gateway with the seed route; returns (gateway port, ports by name)."""
    ports = {name: start_upstream_proc(procs, name) for name in names}
    for name, port in ports.items():
        await register(consul, name, port)
    config = tmp_path / "routes.yaml"
    config.write_text(SEED.format(consul=consul))
    _, gateway_port = start_gateway_proc(procs, config)
    return gateway_port, ports


async def eventually_instances(session: aiohttp.ClientSession, port: int, count: int) -> bool:
    """Poll the gateway's health until discovery reports `count` instances of ws-service."""
    deadline = time.monotonic() + 5
    for _ in range(500):
        async with session.get(f"http://127.0.0.1:{port}/actuator/health") as response:
            services = (await response.json())["components"]["discovery"]["services"]
        if services.get("ws-service") == count or time.monotonic() > deadline:
            return bool(services.get("ws-service") == count)
        await asyncio.sleep(0.02)
    return False


async def whoami(session: aiohttp.ClientSession, port: int) -> str:
    async with session.ws_connect(f"ws://127.0.0.1:{port}/ws-svc/websocket") as ws:
        await ws.send_str("whoami")
        return str((await ws.receive()).data)


async def test_gateway_seed_route_balances_over_consul_instances(procs: ProcessGroup, consul_addr: str,
                                                                 tmp_path: Path) -> None:
    port, _ = await seed_cluster(procs, consul_addr, tmp_path)
    async with aiohttp.ClientSession() as session:
        names = [await whoami(session, port) for _ in range(4)]
        text = ""
        for _ in range(250):  # the last tunnel's bytes are recorded when its sockets close
            async with session.get(f"http://127.0.0.1:{port}/actuator/prometheus") as response:
                text = await response.text()
            if 'wsgate_active_tunnels{route="ws-svc"} 0' in text:
                break
            await asyncio.sleep(0.02)
    assert sorted(names) == ["one", "one", "two", "two"]
    assert 'wsgate_upgrades_total{instance="127.0.0.1:' in text
    received = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith('wsgate_tunnel_bytes_total{direction="upstream",route="ws-svc"}')]
    assert received and received[0] > 4 * len("whoami")


async def test_gateway_relays_refusal_subprotocol_deflate_big_messages_and_close_codes(
        procs: ProcessGroup, consul_addr: str, tmp_path: Path) -> None:
    port, ports = await seed_cluster(procs, consul_addr, tmp_path, ("solo",))
    base = f"ws://127.0.0.1:{port}/ws-svc"
    async with aiohttp.ClientSession() as session:
        try:
            await session.ws_connect(f"{base}/websocket?status=403")
            raise AssertionError("the backend's 403 should reach the client")
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 403
            assert error.headers is not None and "session=abc123" in error.headers["Set-Cookie"]
        async with session.ws_connect(f"{base}/websocket?protocols=chat.v2", protocols=("chat.v1", "chat.v2"),
                                      compress=15, max_msg_size=4 << 20) as ws:
            assert ws.protocol == "chat.v2"
            assert "permessage-deflate" in ws._response.headers["Sec-WebSocket-Extensions"]
            payload = os.urandom(1 << 20)
            await ws.send_bytes(payload)
            assert (await ws.receive()).data == payload
            await ws.send_str("close:4999")
            message = await ws.receive()
            assert (message.type, message.data) == (WSMsgType.CLOSE, 4999)
        async with session.ws_connect(f"{base}/websocket") as ws:
            await ws.send_str("hi")
            await ws.receive()
            await ws.close(code=4999)
        async with session.get(f"http://127.0.0.1:{ports['solo']}/closes") as response:
            closes = await response.json()
    assert closes[-1] == 4999


async def test_gateway_stops_sending_upgrades_to_failing_instance_within_a_second(
        procs: ProcessGroup, consul_addr: str, tmp_path: Path) -> None:
    port, _ = await seed_cluster(procs, consul_addr, tmp_path)
    await set_check(consul_addr, "one", "fail")
    failed_at = time.monotonic()
    async with aiohttp.ClientSession() as session:
        # Upgrade until four in a row land on "two"; the run must start within a second of the failure.
        run_started, run = time.monotonic(), 0
        while run < 4 and time.monotonic() - failed_at < 5:
            if await whoami(session, port) == "two":
                run += 1
            else:
                run_started, run = time.monotonic(), 0
        names = {await whoami(session, port) for _ in range(6)}
    assert run == 4
    assert run_started - failed_at < 1.0
    assert names == {"two"}


async def test_gateway_skips_instance_that_refuses_connections(procs: ProcessGroup, consul_addr: str,
                                                               tmp_path: Path) -> None:
    port, _ = await seed_cluster(procs, consul_addr, tmp_path, ("alive",))
    await register(consul_addr, "dead", free_port())
    async with aiohttp.ClientSession() as session:
        assert await eventually_instances(session, port, 2)
        names = [await whoami(session, port) for _ in range(4)]
        async with session.get(f"http://127.0.0.1:{port}/actuator/prometheus") as response:
            text = await response.text()
    assert names == ["alive"] * 4
    assert 'wsgate_upstream_errors_total{instance="127.0.0.1:' in text


async def test_gateway_answers_503_json_when_service_has_no_instance(procs: ProcessGroup, consul_addr: str,
                                                                     tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(SEED.format(consul=consul_addr))
    _, port = start_gateway_proc(procs, config)
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/ws-svc/x") as response:
        assert response.status == 503
        assert (await response.json())["service"] == "ws-service"


async def test_gateway_closing_either_side_closes_the_other(procs: ProcessGroup, consul_addr: str,
                                                            tmp_path: Path) -> None:
    port, ports = await seed_cluster(procs, consul_addr, tmp_path, ("solo",))
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{port}/ws-svc/websocket") as ws:
            await ws.send_str("close:1001")
            message = await asyncio.wait_for(ws.receive(), 5)
            assert (message.type, message.data) == (WSMsgType.CLOSE, 1001)
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws-svc/websocket")
        await ws.send_str("hi")
        await ws.receive()
        assert ws._response.connection is not None
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        closes: list[int | None] = []
        for _ in range(250):
            async with session.get(f"http://127.0.0.1:{ports['solo']}/closes") as response:
                closes = await response.json()
            if len(closes) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(closes) == 2  # the backend saw the abandoned tunnel end
