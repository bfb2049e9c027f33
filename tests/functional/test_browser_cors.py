"""CORS in a real chromium: pages served from two other origins fetch through a gateway process configured with
SCG's `globalcors`. The allowed origin's credentialed PUT with a custom header passes its preflight and reads an
exposed header; the other origin's fetch is refused by the browser after the gateway answered 403.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from harness import ProcessGroup
from tests.gateway.procs import start_gateway_proc, start_upstream_proc

WAIT_MS = 8000
PAGE = "<!doctype html><html><body>page</body></html>"


@pytest.fixture
async def page_origins() -> AsyncIterator[tuple[str, str]]:
    """Two page servers: two origins (same host, other ports) that are not the gateway's."""
    servers: list[TestServer] = []

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    for _ in range(2):
        app = web.Application()
        app.router.add_get("/", page)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    try:
        yield f"http://127.0.0.1:{servers[0].port}", f"http://127.0.0.1:{servers[1].port}"
    finally:
        for server in servers:
            await server.close()


def gateway_yaml(upstream: int, allowed: str) -> str:
    return f"""\
spring:
  cloud:
    gateway:
      globalcors:
        cors-configurations:
          '[/api/**]':
            allowedOrigins: "{allowed}"
            allowedMethods: [GET, PUT]
            allowedHeaders: [X-Token, Content-Type]
            exposedHeaders: X-Upstream
            allowCredentials: true
            maxAge: 60
      routes:
        - id: api
          uri: http://127.0.0.1:{upstream}
          predicates:
            - Path=/api/**
"""


FETCH = """async (url) => {
    try {
        const r = await fetch(url, {method: "PUT", credentials: "include",
                                    headers: {"X-Token": "t1", "Content-Type": "application/json"},
                                    body: JSON.stringify({a: 1})});
        const body = await r.json();
        return {ok: true, status: r.status, upstream: r.headers.get("X-Upstream"), method: body.method,
                token: (body.headers.find(h => h[0] === "X-Token") || [])[1]};
    } catch (e) {
        return {ok: false, error: String(e)};
    }
}"""


async def test_browser_cors_allowed_and_refused_origins(browser: Any, procs: ProcessGroup, tmp_path: Path,
                                                        page_origins: tuple[str, str]) -> None:
    allowed, other = page_origins
    upstream = start_upstream_proc(procs, "upstream")
    config = tmp_path / "routes.yaml"
    config.write_text(gateway_yaml(upstream, allowed))
    _, port = start_gateway_proc(procs, config)
    url = f"http://127.0.0.1:{port}/api/things"

    page = await browser.new_page()
    await page.goto(allowed + "/")
    result = await page.evaluate(FETCH, url)
    assert result == {"ok": True, "status": 200, "upstream": "upstream", "method": "PUT", "token": "t1"}

    page = await browser.new_page()
    await page.goto(other + "/")
    result = await page.evaluate(FETCH, url)
    assert result["ok"] is False and "Failed to fetch" in result["error"]

    # What the browser saw, asked directly: the gateway answered both preflights itself.
    preflight = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "x-token,content-type"}
    async with aiohttp.ClientSession() as session:
        async with session.options(url, headers={"Origin": allowed, **preflight}) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == allowed
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
            assert response.headers["Access-Control-Max-Age"] == "60"
        async with session.options(url, headers={"Origin": other, **preflight}) as response:
            assert response.status == 403
            assert "Access-Control-Allow-Origin" not in response.headers
