"""A real gateway process: no query string (token, key) in its log, the shipped routes.yaml keeps management data
private (issue 13, items 3 and 7, the gateway's part), and a silent instance is cut off by the route's response
timeout (issue 14, item 3). docs/security.md#gateway."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp

from harness import ROOT, ProcessGroup, free_port
from tests.gateway.framing import OK, ScriptedUpstream
from tests.gateway.procs import eventually, start_gateway_proc, start_upstream_proc

SECRETS = ("SECRET-HTTP-TOKEN", "SECRET-API-KEY", "SECRET-WS-TOKEN", "SECRET-404", "SECRET-400", "SECRET-PARSE",
           "SECRET-HEADER")


async def raw_status(port: int, data: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        line = await asyncio.wait_for(reader.readline(), 10.0)
        return int(line.split(b" ")[1])
    finally:
        writer.close()


async def test_gateway_log_holds_no_query_string(procs: ProcessGroup, tmp_path: Path) -> None:
    upstream = start_upstream_proc(procs, "upstream")
    config = tmp_path / "routes.yaml"
    config.write_text(f"routes:\n  - id: a\n    uri: http://127.0.0.1:{upstream}\n    predicates: [Path=/a/**]\n"
                      "    filters: [StripPrefix=1]\n")
    gateway, port = start_gateway_proc(procs, config, env={"WSGATE_LOG_LEVEL": "DEBUG"})
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/a/echo?token={SECRETS[0]}&api_key={SECRETS[1]}") as response:
            assert response.status == 200
        async with http.ws_connect(f"ws://127.0.0.1:{port}/a/ws?token={SECRETS[2]}") as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str()) == "hi"
        async with http.get(f"{base}/nowhere?token={SECRETS[3]}") as response:
            assert response.status == 404
    # Refused after routing (a body on a WebSocket handshake) and before it (a Connection naming Content-Length).
    assert await raw_status(port, (f"GET /a/ws?token={SECRETS[4]} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
                                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 13\r\nContent-Length: 1\r\n\r\nx").encode()) == 400
    assert await raw_status(port, (f"POST /a/x?token={SECRETS[5]} HTTP/1.1\r\nHost: gw\r\n"
                                   "Connection: content-length\r\nContent-Length: 1\r\n\r\nx").encode()) == 400
    # A header line without its colon: the error message that is logged must not quote it.
    assert await raw_status(port, f"GET /a/x HTTP/1.1\r\nHost: gw\r\nAuthorization Bearer {SECRETS[6]}\r\n\r\n"
                            .encode()) == 400
    # Every request above leaves one access line; once all are there, none holds a query string or a token.
    assert await eventually(lambda: gateway.log().count("gateway.access") >= 7, timeout_s=10.0), gateway.log()
    log = gateway.log()
    assert "/a/echo" in log and "/a/ws" in log
    leaked = [secret for secret in SECRETS if secret in log]
    assert not leaked, f"the gateway's log holds {leaked}:\n{log}"


def _shipped_gateway(procs: ProcessGroup, name: str, env: dict[str, str]) -> int:
    """The shipped routes.yaml as it is (listening on every interface), its Consul address pointing nowhere."""
    port = free_port()
    proc = procs.python(name, "gateway", "--config", str(ROOT / "routes.yaml"), "--port", str(port), "--workers", "1",
                        env={"CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}", **env})
    proc.wait_http_ready(f"http://127.0.0.1:{port}/actuator/health", expect=(200, 503))
    return port


async def test_shipped_routes_yaml_keeps_management_data_private(procs: ProcessGroup) -> None:
    port = _shipped_gateway(procs, "gateway", {"WSGATE_ADMIN_TOKEN": ""})
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/actuator/prometheus", "/actuator/gateway/routes", "/actuator/admin/data", "/actuator"):
            async with http.get(base + path) as response:
                assert response.status == 403, path
        async with http.get(f"{base}/actuator/health") as response:
            assert set(json.loads(await response.read())) == {"status"}  # no details
        for path in ("/ws-svc/metrics", "/ws-svc/health"):  # the nodes' management paths are not routed
            async with http.get(base + path) as response:
                assert response.status == 404, path


async def test_shipped_routes_yaml_serves_management_data_with_the_admin_token(procs: ProcessGroup) -> None:
    port = _shipped_gateway(procs, "gateway-token", {"WSGATE_ADMIN_TOKEN": "s3cret-admin"})
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/actuator/prometheus") as response:
            assert response.status == 401
        async with http.get(f"{base}/actuator/prometheus",
                            headers={"Authorization": "Bearer s3cret-admin"}) as response:
            assert response.status == 200
        async with http.get(f"{base}/actuator/health", headers={"Authorization": "Bearer s3cret-admin"}) as response:
            assert "components" in json.loads(await response.read())


async def test_silent_instance_on_a_reused_pooled_connection_gets_504_within_the_route_timeout(
        procs: ProcessGroup, tmp_path: Path) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        if index == 0:
            await reader.readuntil(b"\r\n\r\n")  # the next request on the pooled connection: never answered

    upstream = ScriptedUpstream(script)
    upstream_port = await upstream.start()
    try:
        config = tmp_path / "routes.yaml"
        config.write_text(f"routes:\n  - id: a\n    uri: http://127.0.0.1:{upstream_port}\n"
                          "    predicates: [Path=/a/**]\n    metadata: {response-timeout: 500}\n")
        _, port = start_gateway_proc(procs, config)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/a/1") as response:
                assert response.status == 200
            started = time.monotonic()
            async with http.get(f"http://127.0.0.1:{port}/a/2", headers={"Connection": "close"}) as response:
                assert response.status == 504
            assert time.monotonic() - started < 10.0
            await asyncio.wait_for(upstream.ended[0].wait(), 10.0)  # the pooled connection was dropped
            async with http.get(f"http://127.0.0.1:{port}/a/3") as response:
                assert response.status == 200
        assert upstream.accepted == 2
    finally:
        await upstream.close()
