"""Plain HTTP through the gateway: rewritten targets, X-Forwarded-*, streaming bodies, keep-alive, timeouts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp

from gateway.model import RouteMetadata
from tests.gateway.conftest import StartGateway, StartUpstream, config, route


async def test_http_proxy_rewrites_path_and_adds_forwarded_headers(start_upstream: StartUpstream,
                                                                   start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/svc/**"],
                                          ["StripPrefix=1"])))
    async with aiohttp.ClientSession() as session, session.get(
            f"{gw.url}/svc/a/b?x=1&y=%20", headers={"Connection": "keep-alive, X-Secret", "X-Secret": "s",
                                                    "X-Keep": "k"}) as response:
        assert response.status == 200
        echoed = await response.json()
    headers = {k.lower(): v for k, v in echoed["headers"]}
    assert echoed["path"] == "/a/b"
    assert echoed["query"] == "x=1&y=%20"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert headers["x-forwarded-port"] == str(gw.port)
    assert headers["x-forwarded-prefix"] == "/svc"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["x-keep"] == "k"
    assert "x-secret" not in headers


async def test_http_proxy_streams_large_chunked_request_body(start_upstream: StartUpstream,
                                                             start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    payload = os.urandom(3 * 1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start:start + 65536]

    async with aiohttp.ClientSession() as session, session.post(f"{gw.url}/echo", data=body()) as response:
        assert response.status == 200
        assert await response.read() == payload


async def test_http_proxy_streams_content_length_body(start_upstream: StartUpstream,
                                                      start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    payload = os.urandom(1024 * 1024)
    async with aiohttp.ClientSession() as session, session.post(f"{gw.url}/echo", data=payload) as response:
        assert response.headers["Content-Length"] == str(len(payload))
        assert await response.read() == payload


async def test_http_proxy_relays_chunked_response(start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/stream?chunks=5&size=1000") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == b"".join(bytes([65 + i]) * 1000 for i in range(5))


async def test_http_proxy_keeps_upstream_connections_alive(start_upstream: StartUpstream,
                                                           start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    peers = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            async with session.get(f"{gw.url}/a") as response:
                peers.add((await response.json())["peer"])
        assert len(session.connector._conns) == 1  # type: ignore[union-attr]
    assert len(peers) == 1


async def test_http_proxy_serves_several_requests_on_one_client_connection(
        start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        request = b"GET /stream?chunks=2&size=3 HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request + request)
        first = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        second = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")
        assert b"AAA" in second and b"BBB" in second
    finally:
        writer.close()


async def test_http_proxy_applies_response_header_filters(start_upstream: StartUpstream,
                                                          start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          ["AddResponseHeader=X-Gw, yes", "RemoveResponseHeader=X-Upstream"])))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/a") as response:
        assert response.headers["X-Gw"] == "yes"
        assert "X-Upstream" not in response.headers


async def test_http_proxy_answers_504_after_response_timeout(start_upstream: StartUpstream,
                                                             start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          metadata=RouteMetadata(response_timeout_s=0.2))))
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/slow?s=0.8") as response:
        assert response.status == 504


async def test_http_proxy_head_request_has_no_body(start_upstream: StartUpstream,
                                                   start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    async with aiohttp.ClientSession() as session:
        async with session.head(f"{gw.url}/a") as response:
            assert response.status == 200
        async with session.get(f"{gw.url}/a") as response:
            assert response.status == 200


async def test_http_proxy_answers_expect_continue_itself(start_upstream: StartUpstream,
                                                         start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/**"])))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    finally:
        writer.close()
