"""The browser side, in a real chromium: the wsgate.js client against a small protocol server, then the demo page
against a whole cluster (two nodes behind the gateway, Consul discovery, Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import ClientSession, WSMsgType, web
from aiohttp.test_utils import TestServer

from demo.server import DemoError, DemoSettings, build_app
from harness import ROOT, free_port
from tests.functional.conftest import Cluster

WSGATE_JS = ROOT / "wsnode" / "static" / "wsgate.js"
DOCS_IMAGES = ROOT / "docs" / "images"
WAIT_MS = 8000

PAGE_CLASSIC = """<!doctype html><html><body><script src="/static/wsgate.js"></script></body></html>"""
PAGE_MODULE = """<!doctype html><html><body><script type="module">
import "/static/wsgate.js";
window.moduleWsGate = globalThis.WsGate;
</script></body></html>"""


@dataclass
class FakeNode:
    """A protocol server speaking the node's wire format, driven by the test."""

    node_id: str = "fake-1"
    answer_pings: bool = True
    connections: list[dict[str, str]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections.append(dict(request.query))
        self.sockets.append(ws)
        welcome: dict[str, Any] = {"type": "welcome", "session": f"s{len(self.connections)}", "user": "alice",
                                   "node": self.node_id, "unread": {"notices": 1}}
        if "since" in request.query:
            welcome["recovered"] = True
        await ws.send_str(json.dumps(welcome))
        self._notify()
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            self.received.append(frame)
            self._notify()
            if frame["type"] == "ping" and self.answer_pings:
                await ws.send_str('{"type":"pong"}')
            elif frame["type"] == "publish":
                await ws.send_str(json.dumps({"type": "accepted", "ref": frame["ref"]}))
        self._notify()
        return ws

    def _notify(self) -> None:
        self.changed.set()

    async def wait_for(self, predicate: Any, *, timeout_s: float = 5.0) -> None:
        """Wait until predicate() is true, woken by every change."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def send(self, frame: dict[str, Any], *, index: int = -1) -> None:
        await self.sockets[index].send_str(json.dumps(frame))


def _html(text: str) -> Any:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/html")

    return handler


@pytest.fixture
async def fake_node() -> AsyncIterator[tuple[FakeNode, str]]:
    """The fake node and its base URL; serves wsgate.js and two test pages."""
    node = FakeNode()
    app = web.Application()
    app.router.add_get("/websocket", node.websocket)
    app.router.add_get("/classic", _html(PAGE_CLASSIC))
    app.router.add_get("/module", _html(PAGE_MODULE))
    app.router.add_static("/static/", WSGATE_JS.parent)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield node, f"http://127.0.0.1:{server.port}"
    finally:
        for ws in node.sockets:
            await ws.close()
        await server.close()


async def _client_page(browser: Any, base: str, options: str = "") -> Any:
    """A page with a WsGate client in `window.client` that records what it sees in `window.seen`."""
    page = await browser.new_page()
    await page.goto(f"{base}/classic")
    await page.evaluate("""(extra) => {
        window.seen = {states: [], messages: [], chat: [], unread: [], errors: []};
        const options = Object.assign({
            url: location.origin + "/websocket",
            getToken: () => { window.tokens = (window.tokens || 0) + 1; return "tok" + window.tokens; },
            backoffBaseMs: 20, backoffMaxMs: 100,
            onState: (s) => window.seen.states.push(s),
            onUnread: (u) => window.seen.unread.push(u),
            onError: (e) => window.seen.errors.push(e),
        }, extra);
        window.client = new WsGate(options);
        window.client.on("notices", (m) => window.seen.messages.push(m.id));
        window.client.on("chat", (m) => window.seen.chat.push(m.id));
    }""", json.loads(options or "{}"))
    await page.wait_for_function("window.client.state === 'open'", timeout=WAIT_MS)
    return page


@pytest.mark.parametrize(("path", "expression"), [
    ("/classic", "typeof WsGate === 'function' && typeof WsGate.backoffDelayMs === 'function'"),
    ("/module", "typeof window.moduleWsGate === 'function' && window.moduleWsGate === globalThis.WsGate"),
])
async def test_wsgate_js_loads_as_classic_script_and_as_module(
        browser: Any, fake_node: tuple[FakeNode, str], path: str, expression: str) -> None:
    _, base = fake_node
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(base + path)
    await page.wait_for_function(expression, timeout=WAIT_MS)
    assert errors == []


@pytest.mark.parametrize(("attempt", "random", "expected_ms"), [
    (0, 0.999, 99),       # first retry: within [0, base)
    (1, 0.5, 100),        # base * 2
    (3, 0.5, 400),        # base * 8
    (10, 0.999, 4995),    # capped at max
    (10, 0.0, 0),         # full jitter reaches down to zero
])
async def test_wsgate_js_backoff_is_capped_exponential_with_full_jitter(
        browser: Any, fake_node: tuple[FakeNode, str], attempt: int, random: float, expected_ms: int) -> None:
    _, base = fake_node
    page = await browser.new_page()
    await page.goto(f"{base}/classic")
    delay = await page.evaluate("([a, r]) => WsGate.backoffDelayMs(a, 100, 5000, () => r)", [attempt, random])
    assert delay == expected_ms


async def test_wsgate_js_dispatches_per_module_drops_duplicates_and_tracks_unread(
        browser: Any, fake_node: tuple[FakeNode, str]) -> None:
    node, base = fake_node
    page = await _client_page(browser, base)
    assert await page.evaluate("[client.node, client.session, client.user]") == ["fake-1", "s1", "alice"]
    assert node.connections[0]["token"] == "tok1"
    assert "since" not in node.connections[0]
    for ident, module in (("1", "notices"), ("2", "chat"), ("1", "notices"), ("3", "notices")):
        await node.send({"type": "message", "id": ident, "module": module, "event": "created", "data": {}, "ts": 1})
    await node.send({"type": "unread", "unread": {"notices": 2, "chat": 1}})
    await page.wait_for_function("window.seen.unread.length === 2", timeout=WAIT_MS)
    assert await page.evaluate("window.seen.messages") == ["1", "3"]
    assert await page.evaluate("window.seen.chat") == ["2"]
    assert await page.evaluate("[client.unread, client.stats.duplicates, client.lastId]") == [
        {"notices": 2, "chat": 1}, 1, "3"]


async def test_wsgate_js_reconnects_after_drain_with_since_and_fresh_token(
        browser: Any, fake_node: tuple[FakeNode, str]) -> None:
    node, base = fake_node
    page = await _client_page(browser, base)
    await node.send({"type": "message", "id": "7", "module": "notices", "event": "e", "data": None, "ts": 1})
    await page.wait_for_function("window.client.lastId === '7'", timeout=WAIT_MS)
    await node.sockets[0].close(code=1001, message=b"draining")
    await node.wait_for(lambda: len(node.connections) == 2)
    await page.wait_for_function("window.client.state === 'open' && window.client.session === 's2'", timeout=WAIT_MS)
    assert node.connections[1] == {"token": "tok2", "since": "7"}
    states = await page.evaluate("window.seen.states")
    assert states == ["connecting", "open", "reconnecting", "connecting", "open"]
    assert await page.evaluate("client.recovered") is True
    # The replay of message 7 after the reconnect is a duplicate and is dropped.
    await node.send({"type": "message", "id": "7", "module": "notices", "event": "e", "data": None, "ts": 1})
    await node.send({"type": "message", "id": "8", "module": "notices", "event": "e", "data": None, "ts": 1})
    await page.wait_for_function("window.seen.messages.length === 2", timeout=WAIT_MS)
    assert await page.evaluate("window.seen.messages") == ["7", "8"]


async def test_wsgate_js_acks_publishes_and_answers_server_ping(
        browser: Any, fake_node: tuple[FakeNode, str]) -> None:
    node, base = fake_node
    page = await _client_page(browser, base)
    # evaluate() awaits the promise: publish resolves (with its ref) only when the server answers `accepted`.
    ref = await page.evaluate("client.ack('5'); client.publish('chat', {text: 'hi'})")
    await node.send({"type": "ping"})
    await node.wait_for(lambda: len(node.received) >= 3)
    assert node.received == [{"type": "ack", "id": "5"},
                             {"type": "publish", "module": "chat", "data": {"text": "hi"}, "ref": ref},
                             {"type": "pong"}]


async def test_wsgate_js_treats_missing_pong_as_dead_connection(
        browser: Any, fake_node: tuple[FakeNode, str]) -> None:
    node, base = fake_node
    node.answer_pings = False
    page = await _client_page(browser, base, '{"pingIntervalMs": 100, "pongTimeoutMs": 150}')
    await node.wait_for(lambda: len(node.connections) == 2)
    await page.wait_for_function("window.client.session === 's2'", timeout=WAIT_MS)
    assert {"type": "ping"} in node.received
    assert "reconnecting" in await page.evaluate("window.seen.states")


# ---- the demo server on its own ------------------------------------------------------------------------------

DEMO_SECRET = "a-demo-secret-of-at-least-32-bytes!"


@pytest.fixture
async def demo_server() -> AsyncIterator[str]:
    """The demo server pointed at a gateway address where nothing listens."""
    settings = DemoSettings(secret=DEMO_SECRET, gateway_url=f"http://127.0.0.1:{free_port()}", api_key="k",
                            token_ttl_s=60)
    server = TestServer(build_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_demo_server_mints_short_lived_token_for_user(demo_server: str) -> None:
    async with ClientSession() as http, http.post(f"{demo_server}/token", json={"user": "alice"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    claims = jwt.decode(body["token"], DEMO_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60 == body["expires_at"] - claims["iat"]


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/token", '{"user": "a b"}', 400, "user must be 1-64"),
    ("/token", '{"user": 5}', 400, "user must be a string"),
    ("/token", "not json", 400, "body must be JSON"),
    ("/token", "[1]", 400, "body must be a JSON object"),
    ("/push", '{"to": {"all": true}}', 502, "did not answer"),
])
async def test_demo_server_refuses_bad_requests_with_json_error(
        demo_server: str, path: str, body: str, status: int, error: str) -> None:
    async with ClientSession() as http, http.post(demo_server + path, data=body) as resp:
        assert resp.status == status
        assert error in (await resp.json())["error"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"gateway_url": "127.0.0.1:8080"}, "--gateway must be http(s)://host:port"),
    ({"gateway_url": "http://127.0.0.1:8080/ws-svc"}, "--gateway must be http(s)://host:port"),
    ({"secret": ""}, "--secret must not be empty"),
    ({"token_ttl_s": 1}, "--token-ttl-s must be 10-86400"),
    ({"route_prefix": "ws-svc"}, "--route-prefix must look like /ws-svc"),
])
def test_demo_settings_refuse_bad_values(changes: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"secret": "s", "gateway_url": "http://127.0.0.1:8080", "api_key": "k", **changes}
    with pytest.raises(DemoError, match=re.escape(message)):
        DemoSettings(**values)


# ---- the demo page against a whole cluster ----------------------------------------------------------------------

VIEWPORT = {"width": 1280, "height": 760}


async def _demo_page(browser: Any, cluster: Cluster, user: str, *, context: Any = None) -> Any:
    """A demo page signed in as `user` and connected (through the gateway) to some node."""
    context = context or await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{cluster.demo_url}?user={user}")
    await page.wait_for_function("window.demo.client && window.demo.client.state === 'open'", timeout=WAIT_MS)
    assert errors == []
    return page


def _panel(module: str) -> str:
    return f".panel[data-module='{module}']"


async def _node_of(page: Any) -> str:
    node: str = await page.evaluate("window.demo.client.node")
    return node


async def _wait_text(page: Any, selector: str, text: str) -> None:
    await page.wait_for_function("([s, t]) => document.querySelector(s)?.textContent === t",
                                 arg=[selector, text], timeout=WAIT_MS)


async def _push(cluster: Cluster, user: str, module: str, text: str) -> dict[str, Any]:
    return await asyncio.to_thread(cluster.push, {"to": {"users": [user]}, "module": module, "event": "created",
                                                  "data": {"text": text}})


async def test_demo_page_shows_push_in_its_panel_and_badge_drops_after_reading(
        cluster: Cluster, browser: Any, artifacts: Path) -> None:
    page = await _demo_page(browser, cluster, "alice")
    assert await page.text_content("#node") in cluster.nodes
    answer = await _push(cluster, "alice", "orders", "Order 1042 has shipped")
    assert answer["online_sessions"] == 1
    await page.wait_for_selector(f"{_panel('orders')} .msg.unread >> text=Order 1042 has shipped", timeout=WAIT_MS)
    await _wait_text(page, f"{_panel('orders')} .badge", "1")
    assert await page.text_content(f"{_panel('notices')} .badge") == "0"
    assert await page.locator(f"{_panel('notices')} .msg").count() == 0
    await _push(cluster, "alice", "notices", "Maintenance tonight at 22:00")
    await _push(cluster, "alice", "chat", "bob: lunch at noon?")
    await _push(cluster, "alice", "orders", "Order 1043 is being packed")
    await _wait_text(page, f"{_panel('orders')} .badge", "2")
    await page.click(f"{_panel('orders')} .msg >> text=Order 1042 has shipped")
    await _wait_text(page, f"{_panel('orders')} .badge", "1")
    assert await page.locator(f"{_panel('orders')} .msg.unread .text").all_text_contents() == [
        "Order 1043 is being packed"]
    await page.wait_for_function("window.demo.client.unread.chat === 1 && window.demo.client.unread.notices === 1",
                                 timeout=WAIT_MS)
    assert await page.evaluate("window.demo.client.unread") == {"notices": 1, "chat": 1, "orders": 1}
    await page.mouse.move(0, 0)
    await page.screenshot(path=str(artifacts / "demo.png"), animations="disabled")
    # The README's picture is refreshed only on request, so that a test run leaves the working tree clean.
    if os.environ.get("WSGATE_UPDATE_SCREENSHOTS") == "1" or not (DOCS_IMAGES / "demo.png").exists():
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts / "demo.png", DOCS_IMAGES / "demo.png")


async def test_demo_second_tab_of_the_same_user_follows(cluster: Cluster, browser: Any, artifacts: Path) -> None:
    first = await _demo_page(browser, cluster, "bob")
    second = await _demo_page(browser, cluster, "bob", context=first.context)
    assert await first.evaluate("window.demo.client.session") != await second.evaluate("window.demo.client.session")
    # A push from the first tab's form reaches both tabs.
    await first.fill("#push-text", "Invoice 7 is ready")
    await first.select_option("#push-module", "notices")
    await first.click("#push-send")
    await first.wait_for_function("document.getElementById('push-result').textContent.startsWith('pushed')",
                                  timeout=WAIT_MS)
    assert "2 online session(s)" in (await first.text_content("#push-result") or "")
    for page in (first, second):
        await page.wait_for_selector(f"{_panel('notices')} .msg >> text=Invoice 7 is ready", timeout=WAIT_MS)
        await _wait_text(page, f"{_panel('notices')} .badge", "1")
    # Reading in one tab lowers the badge in the other (the server's unread frames).
    await first.click(f"{_panel('notices')} .msg >> text=Invoice 7 is ready")
    await _wait_text(second, f"{_panel('notices')} .badge", "0")
    await second.screenshot(path=str(artifacts / "demo-second-tab.png"), animations="disabled")


async def test_demo_page_moves_to_the_other_node_on_sigterm_without_losing_messages(
        cluster: Cluster, browser: Any, artifacts: Path) -> None:
    page = await _demo_page(browser, cluster, "carol")
    first_node = await _node_of(page)
    other_node = next(name for name in cluster.nodes if name != first_node)
    await _push(cluster, "carol", "orders", "before")
    await page.wait_for_selector(f"{_panel('orders')} .msg >> text=before", timeout=WAIT_MS)
    cluster.nodes[first_node].signal(signal.SIGTERM)
    await page.wait_for_function("window.demo.client.state !== 'open'", timeout=WAIT_MS)
    await _push(cluster, "carol", "orders", "during")
    await page.wait_for_function("([n]) => window.demo.client.state === 'open' && window.demo.client.node === n",
                                 arg=[other_node], timeout=WAIT_MS)
    await _push(cluster, "carol", "orders", "after")
    await _wait_text(page, f"{_panel('orders')} .badge", "3")
    await page.wait_for_selector(f"{_panel('orders')} .msg >> text=after", timeout=WAIT_MS)
    texts = await page.locator(f"{_panel('orders')} .msg .text").all_text_contents()
    assert texts == ["after", "during", "before"]
    assert await page.text_content("#node") == other_node
    await page.screenshot(path=str(artifacts / "demo-failover.png"), animations="disabled")
    assert await asyncio.to_thread(cluster.nodes[first_node].wait_exit, timeout_s=10) == 0


# ---- the gateway's admin page against the cluster ---------------------------------------------------------------


async def test_admin_page_asks_for_the_token_and_shows_both_nodes_follow_a_client(
        cluster: Cluster, browser: Any, artifacts: Path) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{cluster.gateway_url}/actuator/admin")
    await page.wait_for_selector("#token-input", state="visible", timeout=WAIT_MS)
    await page.fill("#token-input", "not-the-token")
    await page.click("#token-submit")
    await page.wait_for_selector("#token-error >> text=missing or wrong admin token", timeout=WAIT_MS)
    await page.fill("#token-input", cluster.admin_token)
    await page.click("#token-submit")
    nodes = {name: f".node[data-node='{name}']" for name in cluster.nodes}
    for card in nodes.values():
        await _wait_text(page, f"{card} .sessions .value", "0")
    assert await page.evaluate("sessionStorage.getItem('wsgate.admin-token')") == cluster.admin_token
    assert await page.locator("#routes tr").all_text_contents() != []
    # A client connects through the gateway: its node's sessions and tunnels follow, the other node stays at 0.
    client = await _demo_page(browser, cluster, "dave")
    node = await _node_of(client)
    other = next(name for name in cluster.nodes if name != node)
    await _wait_text(page, f"{nodes[node]} .sessions .value", "1")
    await _wait_text(page, f"{nodes[node]} .tunnels .value", "1")
    await _wait_text(page, "#fig-tunnels", "1")
    assert await page.text_content(f"{nodes[other]} .sessions .value") == "0"
    assert await page.text_content(f"{nodes[node]} .tag") == "passing"
    await _demo_page(browser, cluster, "erin", context=client.context)  # another session, for the picture
    # Some traffic for the charts: one push per refresh of the page, paced by the page's own polls.
    for n in range(6):
        await _push(cluster, "dave", "notices", f"admin chart {n}")
        seen = await page.evaluate("window.wsgateAdmin.rate.length")
        await page.wait_for_function("(n) => window.wsgateAdmin.rate.length > n", arg=seen, timeout=WAIT_MS)
    await page.wait_for_function("window.wsgateAdmin.rate.some((v) => v > 0)", timeout=WAIT_MS)
    assert errors == []
    await page.screenshot(path=str(artifacts / "admin.png"), animations="disabled", full_page=True)
    if os.environ.get("WSGATE_UPDATE_SCREENSHOTS") == "1" or not (DOCS_IMAGES / "admin.png").exists():
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts / "admin.png", DOCS_IMAGES / "admin.png")
    # `#token=` in the address works too, and leaves the address bar.
    fresh = await browser.new_context(viewport=VIEWPORT)
    linked = await fresh.new_page()
    await linked.goto(f"{cluster.gateway_url}/actuator/admin#token={cluster.admin_token}")
    await _wait_text(linked, f"{nodes[node]} .sessions .value", "1")
    assert "token" not in linked.url
    await fresh.close()


async def test_wsgate_js_resumes_from_the_last_id_before_a_gap(browser: Any, fake_node: tuple[FakeNode, str]) -> None:
    node, base = fake_node
    page = await _client_page(browser, base)
    await node.send({"type": "message", "id": "11", "module": "notices", "event": "e", "data": None, "ts": 1})
    # 12 never arrives: 13 is not shown, the client reconnects at once with since=11.
    await node.send({"type": "message", "id": "13", "module": "notices", "event": "e", "data": None, "ts": 1})
    await node.wait_for(lambda: len(node.connections) == 2)
    assert node.connections[1]["since"] == "11"
    await page.wait_for_function("window.client.state === 'open' && window.client.session === 's2'", timeout=WAIT_MS)
    for ident in ("12", "13"):
        await node.send({"type": "message", "id": ident, "module": "notices", "event": "e", "data": None, "ts": 1})
    await page.wait_for_function("window.seen.messages.length === 3", timeout=WAIT_MS)
    assert await page.evaluate("window.seen.messages") == ["11", "12", "13"]
    assert await page.evaluate("client.stats.gaps") == 1
