"""The listener's answers: errors (404/408/431/503), failover over refusing instances, connection limits."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import redis.asyncio

from gateway.discovery.base import Endpoint
from gateway.discovery.static import StaticProvider
from gateway.model import BalancerChoice, Balancing, RouteMetadata
from gateway.ratelimit.redis import RedisRateLimiter
from harness import RedisInfo, free_port
from tests.gateway.conftest import StartGateway, StartUpstream, config, route


async def raw_exchange(port: int, data: bytes, *, timeout_s: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict[str, object]:
    return json.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


async def test_server_answers_404_without_route(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(route("r", "http://127.0.0.1:9", ["Path=/only/**"])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/elsewhere") as response:
        assert response.status == 404
        assert (await response.json())["path"] == "/elsewhere"


async def test_server_answers_408_to_slow_head(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(head_timeout_s=0.2))
    response = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert status_of(response) == 408


async def test_server_keeps_a_silent_connection_in_the_kernel_for_defer_accept(start_gateway: StartGateway) -> None:
    """`wsgate.defer-accept`: a connection that sends nothing reaches the gateway only after the period (the
    kernel's TCP_DEFER_ACCEPT), and its head timeout runs from there."""
    gw = await start_gateway(config(head_timeout_s=0.2, defer_accept_s=1.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await raw_exchange(gw.port, b"", timeout_s=10.0)
    assert status_of(response) == 408
    assert loop.time() - started >= 1.0


async def test_server_answers_431_to_large_head(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(max_head_bytes=1024))
    response = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n")
    assert status_of(response) == 431


@pytest.mark.parametrize("head", [
    b"GET /r/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n",  # one long field
    b"GET /r/x HTTP/1.1\r\nHost: x\r\n" + b"X-Many: b\r\n" * 200 + b"\r\n",  # many short ones
    b"GET /r/" + b"p" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a long request line
])
async def test_server_answers_431_to_a_whole_routable_head_over_the_limit(
        start_upstream: StartUpstream, start_gateway: StartGateway, head: bytes) -> None:
    """A head that arrives whole, on a route to a live instance, is refused, not forwarded (both lanes)."""
    port = await start_upstream("up")
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/r/**"]), max_head_bytes=1024))
    response = await raw_exchange(gw.port, head)
    assert status_of(response) == 431, response[:200]


async def test_server_answers_431_to_large_head_still_arriving(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(max_head_bytes=1024))
    response = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 2000)
    assert status_of(response) == 431


async def test_server_error_answer_survives_input_still_arriving(start_gateway: StartGateway) -> None:
    """Closing with unread input would send a reset that destroys the 431; the gateway lingers instead."""
    gw = await start_gateway(config(max_head_bytes=1024))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (4 * 1024 * 1024))  # far more than it reads at once
        response = await asyncio.wait_for(reader.read(), 5)  # ConnectionResetError if the answer was lost
        assert status_of(response) == 431
        await asyncio.wait_for(writer.drain(), 5)  # what followed was read and dropped, not refused
    finally:
        writer.close()


async def test_server_answers_400_to_garbage(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config())
    response = await raw_exchange(gw.port, b"HELLO THERE\r\n\r\n")
    assert status_of(response) == 400


async def test_server_answers_503_naming_service_without_instances(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(route("r", "lb:ws://ws-service", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 503
        body = await response.json()
        assert body["service"] == "ws-service"


async def test_server_skips_refusing_instance(start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    good = await start_upstream("good")
    dead = free_port()
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", dead), Endpoint("127.0.0.1", good))})
    gw = await start_gateway(config(route("r", "lb:ws://svc", ["Path=/**"])), provider=provider)
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            async with session.ws_connect(f"{gw.ws_url}/ws") as ws:
                await ws.send_str("whoami")
                assert (await ws.receive()).data == "good"
    assert gw.metrics.value("wsgate_upstream_errors_total", route="r", instance=f"127.0.0.1:{dead}",
                            reason="refused") >= 2


async def test_server_answers_503_when_every_instance_refuses(start_gateway: StartGateway) -> None:
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", free_port()), Endpoint("127.0.0.1", free_port()))})
    gw = await start_gateway(config(route("r", "lb://svc", ["Path=/**"])), provider=provider)
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/x") as response:
        assert response.status == 503
        assert (await response.json())["service"] == "svc"


async def test_server_follows_discovery_changes(start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one),)})
    gw = await start_gateway(config(route("r", "lb://svc", ["Path=/**"])), provider=provider)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/a") as response:
            assert (await response.json())["name"] == "one"
        provider.set("svc", (Endpoint("127.0.0.1", two),))
        async with session.get(f"{gw.url}/a") as response:
            assert (await response.json())["name"] == "two"


@pytest.mark.parametrize(("defer_accept_s", "holder_sends"), [(0.0, b""), (1.0, b"GET / HTTP/1.1\r\n")])
async def test_server_refuses_connections_beyond_limit(start_gateway: StartGateway, defer_accept_s: float,
                                                       holder_sends: bytes) -> None:
    """A connection holds its place from its accept: at once with `defer-accept` off, at its first bytes with it."""
    gw = await start_gateway(config(max_connections=1, defer_accept_s=defer_accept_s))
    _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(holder_sends)
    try:
        response = await raw_exchange(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(response) == 503
    finally:
        writer.close()


async def test_server_serves_actuator_itself(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(route("catch-all", "http://127.0.0.1:9", ["Path=/**"])))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/actuator/gateway/routes") as response:
            assert response.status == 200
            routes = await response.json()
            assert [r["route_id"] for r in routes] == ["catch-all"]
        async with session.get(f"{gw.url}/actuator/health") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "UP"
        async with session.get(f"{gw.url}/actuator/prometheus") as response:
            assert response.status == 200
            assert "wsgate_requests_total" in await response.text()
        async with session.get(f"{gw.url}/actuator/nothing") as response:
            assert response.status == 404


async def test_server_actuator_wants_admin_token_when_set(start_gateway: StartGateway) -> None:
    gw = await start_gateway(config(admin_token="s3cret"))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/actuator/gateway/routes") as response:
            assert response.status == 401
        async with session.get(f"{gw.url}/actuator/gateway/routes",
                               headers={"Authorization": "Bearer s3cret"}) as response:
            assert response.status == 200
        async with session.get(f"{gw.url}/actuator/health") as response:
            assert response.status == 200


async def test_server_drain_closes_tunnels_after_timeout(start_upstream: StartUpstream,
                                                         start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as ws:
        await asyncio.wait_for(gw.server.drain(0.1), 5)
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)


async def test_server_uses_route_balancer_for_sticky_hashing(start_upstream: StartUpstream,
                                                             start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one), Endpoint("127.0.0.1", two))})
    sticky = RouteMetadata(balancer=BalancerChoice(Balancing.HASH, "header:X-User"))
    gw = await start_gateway(config(route("r", "lb://svc", ["Path=/**"], metadata=sticky)), provider=provider)
    async with aiohttp.ClientSession() as session:
        seen: dict[str, set[str]] = {}
        for user in ("alice", "bob", "carol", "dave") * 3:
            async with session.get(f"{gw.url}/who", headers={"X-User": user}) as response:
                seen.setdefault(user, set()).add((await response.json())["name"])
    assert all(len(names) == 1 for names in seen.values())


async def test_server_least_connections_prefers_instance_without_tunnels(start_upstream: StartUpstream,
                                                                         start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one), Endpoint("127.0.0.1", two))})
    least = RouteMetadata(balancer=BalancerChoice(Balancing.LEAST_CONNECTIONS))
    gw = await start_gateway(config(route("r", "lb:ws://svc", ["Path=/**"], metadata=least)), provider=provider)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.ws_url}/ws") as held:
        await held.send_str("whoami")
        busy = (await held.receive()).data
        (held_tunnel,) = gw.server.tunnels
        for _ in range(3):
            async with session.ws_connect(f"{gw.ws_url}/ws") as ws:
                await ws.send_str("whoami")
                assert (await ws.receive()).data != busy
                closing = [t for t in gw.server.tunnels if t is not held_tunnel]
            await asyncio.wait_for(asyncio.gather(*(t.done for t in closing)), 5)


async def test_server_applies_request_rate_limiter(start_upstream: StartUpstream, start_gateway: StartGateway,
                                                   redis_server: RedisInfo, redis_prefix: str) -> None:
    port = await start_upstream()
    client = redis.asyncio.from_url(redis_server.url)
    limiter = RedisRateLimiter(client, key_prefix=redis_prefix, clock=lambda: 1_000_000.0)
    gw = await start_gateway(config(route("r", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          ["RequestRateLimiter=1, 2, 1, header:X-Key"])), rate_limiter=limiter)
    try:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for _ in range(3):
                async with session.get(f"{gw.url}/x", headers={"X-Key": "k1"}) as response:
                    statuses.append(response.status)
                    remaining = response.headers.get("X-RateLimit-Remaining")
            assert statuses == [200, 200, 429]
            assert remaining == "0"
            async with session.get(f"{gw.url}/x") as response:
                assert response.status == 403  # no key, and deny-empty-key is SCG's default
    finally:
        await client.aclose()
