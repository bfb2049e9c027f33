"""The node's listener: it reads a connection's first request head and picks who serves the connection.

A WebSocket upgrade to the session endpoint takes the lean session path (`wsnode/wsconn.py`); a `POST /api/v1/push`
takes the lean push path (`wsnode/pushconn.py`), which keeps the connection while its requests are pushes it can
frame; anything else (the rest of the push API, `/health`, `/metrics`, static files, a malformed head) goes to
aiohttp's own request handler with the bytes already read, so the rest of the application is served exactly as
before. A connection handed to aiohttp stays there (keep-alive requests after it, an upgrade among them, included).
With `--ws-compress` the node listens with aiohttp's plain site instead: permessage-deflate is negotiated by aiohttp
only.

A connection whose first head is not complete within `--head-timeout` is answered 408 and closed (`Opening`), as
the gateway does: without it a client that connects and sends nothing, or trickles a head, would hold a descriptor
until aiohttp's keep-alive timeout (an hour), and a few thousand of them would exhaust the node's descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from wsnode import api_answers
from wsnode.access_log import ACCESS_LOG, log_request
from wsnode.errors import WebSocketError
from wsnode.handshake import head_length, parse_head, wants_websocket
from wsnode.http1 import http_date, response
from wsnode.push_api import PushApi
from wsnode.pushconn import PUSH_ROUTES, PushConnection, PushHub, hand_to_aiohttp
from wsnode.wsconn import LeanConnection, LeanHub

SESSION_PATH = "/websocket"
_OPENING: set[asyncio.Task[None]] = set()  # handshakes under way (the loop keeps only weak references to tasks)


class Opening:
    """The connections whose first head is not complete yet, oldest first, with one timer for all of them (a timer
    per connection would cost every connect a timer handle and its cancellation)."""

    __slots__ = ("_since", "_timer", "timeout_s")

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._since: dict[FrontProtocol, float] = {}  # insertion order is accept order: the oldest come first
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._since)

    def add(self, conn: FrontProtocol) -> None:
        self._since[conn] = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)

    def discard(self, conn: FrontProtocol) -> None:
        self._since.pop(conn, None)

    def _expire(self) -> None:
        self._timer = None
        # uvloop's timers count from the loop's clock as cached when the iteration that armed them began, so they
        # can fire a little early: the monotonic clock decides, and the timer re-arms for what is left.
        now = time.monotonic()
        while self._since:
            conn, since = next(iter(self._since.items()))
            left = since + self.timeout_s - now
            if left > 0:
                self._timer = asyncio.get_running_loop().call_later(max(left, 0.001), self._expire)
                return
            del self._since[conn]
            conn.time_out()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_HEAD_TIMEOUT = api_answers.error(408, "request head not received in time")


class FrontProtocol(asyncio.Protocol):
    """Until the first head is complete: its bytes, then a hand-over (`set_protocol`) to the one that serves it."""

    __slots__ = ("_buf", "_handler_factory", "_hub", "_opening", "_push", "_transport")

    def __init__(self, hub: LeanHub, push: PushHub, handler_factory: Callable[[], RequestHandler],
                 opening: Opening) -> None:
        self._hub = hub
        self._push = push
        self._handler_factory = handler_factory
        self._opening = opening
        self._transport: asyncio.Transport | None = None
        self._buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._opening.add(self)

    def time_out(self) -> None:
        """The first head did not come in time: 408, then close (the client may not read; closing does not wait)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        answer = _HEAD_TIMEOUT
        transport.write(response(answer.status, answer.encoded(), version=(1, 1), keep_alive=False,
                                 date=http_date(time.time())))
        transport.close()
        if ACCESS_LOG.isEnabledFor(logging.INFO):  # as nginx logs its client_header_timeout: a 408 with no request
            peer = transport.get_extra_info("peername")
            log_request(ACCESS_LOG, peer[0] if isinstance(peer, tuple) else None, "-", "-", answer.status,
                        self._opening.timeout_s)

    def data_received(self, data: bytes) -> None:
        buf = self._buf = self._buf + data
        try:
            end = head_length(buf)
            if end < 0:
                return
            head = parse_head(buf[:end])
        except WebSocketError:
            self._to_aiohttp()  # aiohttp answers a malformed or oversized head its own way
            return
        self._opening.discard(self)
        transport = self._transport
        assert transport is not None
        if (head.method, head.path) in PUSH_ROUTES:
            push = PushConnection(self._push, transport)
            transport.set_protocol(push)
            buf, self._buf = self._buf, b""
            push.data_received(buf)  # it frames the request again, and hands it to aiohttp if it cannot serve it
            return
        # Only what aiohttp's route would hand to the endpoint (a GET of the path): a POST upgrade still gets
        # aiohttp's 405 before any token check, as before.
        if head.method != "GET" or head.path != SESSION_PATH or not wants_websocket(head):
            self._to_aiohttp()
            return
        conn = LeanConnection(self._hub, transport)
        transport.set_protocol(conn)
        self._buf = b""
        task = conn.begin(head, buf[end:])
        _OPENING.add(task)
        task.add_done_callback(_OPENING.discard)

    def _to_aiohttp(self) -> None:
        self._opening.discard(self)
        transport = self._transport
        assert transport is not None
        buf, self._buf = self._buf, b""
        hand_to_aiohttp(transport, self._handler_factory, buf)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._opening.discard(self)
        self._transport = None


class FrontSite(web.TCPSite):
    """aiohttp's TCP site with `FrontProtocol` in front of the application's request handler."""

    __slots__ = ("_api", "_hub", "_push", "opening")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, hub: LeanHub, api: PushApi,
                 backlog: int, head_timeout_s: float, reuse_address: bool = True) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_address=reuse_address)
        self._hub = hub
        self._api = api
        self._push: PushHub | None = None
        self.opening = Opening(head_timeout_s)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        hub = self._hub
        push = self._push = PushHub(self._api.node, self._api.keys, server)
        opening = self.opening
        self._server = await asyncio.get_running_loop().create_server(
            lambda: FrontProtocol(hub, push, server, opening), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address)

    async def stop(self) -> None:
        # As aiohttp's shutdown does for its own keep-alive connections: idle ones close, busy ones after the answer.
        if self._push is not None:
            self._push.stop()
        self.opening.stop()
        await super().stop()
