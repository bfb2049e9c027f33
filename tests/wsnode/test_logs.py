"""No node log line holds a query string, a token or a key (CONTRACT section 8), read from a real node's log after
clients connect with tokens (query and header, good and bad, well-formed requests and broken ones) and backends
push with keys."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import jwt

from tests.wsnode.conftest import API_KEY, API_KEY_2, SECRET, Connect, StartNode, make_token, push


async def _raw(port: int, request: bytes) -> bytes:
    """Send `request`; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_no_log_line_of_a_node_holds_a_query_string_token_or_key(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", env={"WSNODE_LOG_LEVEL": "DEBUG"})
    in_query = make_token("quinn")
    in_header = make_token("quinn")
    expired = make_token("quinn", exp_in_s=-3600)
    forged = jwt.encode({"sub": "quinn", "exp": 4_000_000_000}, "not-the-secret-but-long-enough-32", algorithm="HS256")
    async with http.ws_connect(a.ws_url, params={"token": in_query, "since": "1"}) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    async with http.ws_connect(a.ws_url, headers={"Authorization": f"Bearer {in_header}"}) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    for token in (expired, forged, "garbage-token-value"):
        async with http.get(a.ws_url, params={"token": token}) as resp:
            assert resp.status == 401
    for key in (API_KEY, API_KEY_2, "wrong-key-value"):
        await push(http, a, {"to": {"users": ["quinn"]}, "module": "m"}, key=key)
        async with http.get(f"{a.url}/metrics", headers={"Authorization": f"Bearer {key}"}):
            pass
    async with http.get(f"{a.url}/api/v1/stats?api_key={API_KEY}", headers={"Authorization": f"Bearer {API_KEY}"}):
        pass
    # Broken requests that make the HTTP parser log the line it refused.
    for broken in (f"GET /websocket?token={in_query} HTTP/1.1 junk\r\nHost: x\r\n\r\n",
                   f"GET /websocket?token={in_query} HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
                   f"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\x01\r\n"
                   "Content-Length: 0\r\n\r\n",
                   f"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                   "Content-Length: ²\r\n\r\n"):
        assert b" 400 " in await _raw(a.port, broken.encode())
    a.proc.stop()
    log = a.proc.log()
    assert "GET /websocket 101" in log and "POST /api/v1/push 202" in log and "Error handling request" in log
    for secret in (in_query, in_header, expired, forged, "garbage-token-value", API_KEY, API_KEY_2,
                   "wrong-key-value", SECRET):
        assert secret not in log, f"{secret!r} in the log"
    assert "eyJ" not in log
    assert not re.search(r"/[^\s?'\"]*\?(?!<redacted>)\S", log), re.search(r".*\?\S.*", log)
