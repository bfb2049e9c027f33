"""The lean `POST /api/v1/push`: a keep-alive connection served request after request on the loop's transport.

Why: on a node taking pushes, aiohttp's request machinery (its parser, request and response objects, payload
streams, the handler task's timeouts) was a fifth of the CPU. Backends push over keep-alive connections, so the
front (`wsnode/front.py`) gives a connection whose first request is a push to `PushConnection`, which frames each
request itself (`wsnode/http1.py`) and answers it with the calls aiohttp's route makes (`wsnode/api_answers.py`).
The first request it cannot serve (another route, a chunked body, `Expect`, a malformed head, a body over the limit)
is handed to aiohttp with every byte from that request's start, once the answers before it are written; the
connection stays aiohttp's from then on. Requests are answered one at a time, in order (pipelining included); a
client that half-closes still gets the answers to the requests it sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp.web_protocol import RequestHandler

from wsnode import api_answers
from wsnode.access_log import ACCESS_LOG, log_request
from wsnode.api_answers import Answer
from wsnode.auth import BearerKeys
from wsnode.handshake import RequestHead
from wsnode.http1 import HAND_OVER, Framed, frame_request, http_date, response
from wsnode.node import Node
from wsnode.wsconn import WriteFlow

log = logging.getLogger("wsnode.pushconn")
PUSH_ROUTES = frozenset({("POST", "/api/v1/push")})
# Bytes a pipelining client may have waiting behind the request being answered before reading pauses (a whole
# request is always read: the limit only applies while one is being answered).
PIPELINE_BUFFER_BYTES = 64 * 1024
# aiohttp's keep-alive timeout (web_protocol.RequestHandler's default), so an idle client is closed after the
# same time on both paths; checked by one node-wide timer, not a timer per connection.
KEEPALIVE_TIMEOUT_S = 3630.0
_INTERNAL = api_answers.error(500, "internal server error")


def hand_to_aiohttp(transport: asyncio.Transport, handler_factory: Callable[[], RequestHandler],
                    buf: bytes) -> RequestHandler:
    """Make aiohttp's request handler the connection's protocol, `buf` (read from a request's start) its first bytes."""
    handler = handler_factory()
    transport.set_protocol(handler)
    handler.connection_made(transport)
    if buf:
        handler.data_received(buf)
    return handler


class PushHub:
    """What every lean push connection of a node shares."""

    __slots__ = ("_date", "_date_s", "_timer", "connections", "handler_factory", "keys", "max_body", "node",
                 "stopping")

    def __init__(self, node: Node, keys: BearerKeys, handler_factory: Callable[[], RequestHandler], *,
                 max_body: int = api_answers.MAX_BODY_BYTES) -> None:
        self.node = node
        self.keys = keys
        self.handler_factory = handler_factory
        self.max_body = max_body
        self.connections: set[PushConnection] = set()
        self.stopping = False
        self._timer: asyncio.TimerHandle | None = None
        self._date_s = -1
        self._date = ""

    def date(self) -> str:
        # Formatted once a second, not once a request.
        now = int(time.time())
        if now != self._date_s:
            self._date_s, self._date = now, http_date(now)
        return self._date

    def add(self, conn: PushConnection) -> None:
        self.connections.add(conn)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(KEEPALIVE_TIMEOUT_S / 4, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        deadline = asyncio.get_running_loop().time() - KEEPALIVE_TIMEOUT_S
        for conn in list(self.connections):
            conn.close_if_idle(deadline)
        if self.connections:
            self._timer = asyncio.get_running_loop().call_later(KEEPALIVE_TIMEOUT_S / 4, self._sweep)

    def stop(self) -> None:
        """The node stops listening: idle connections close now, busy ones after their answer."""
        self.stopping = True
        for conn in list(self.connections):
            conn.close_if_idle(float("inf"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PushConnection(WriteFlow):
    """One keep-alive connection whose requests so far were all pushes."""

    __slots__ = ("_buf", "_eof", "_hub", "_idle_since", "_paused", "_transport", "_worker")

    def __init__(self, hub: PushHub, transport: asyncio.Transport) -> None:
        super().__init__()
        self._hub = hub
        self._transport = transport
        self._buf = b""
        self._worker: asyncio.Task[None] | None = None
        self._eof = False
        self._paused = False  # reading paused by us
        self._idle_since = asyncio.get_running_loop().time()
        hub.add(self)

    # --- the asyncio Protocol --------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._worker is not None:
            if len(self._buf) > PIPELINE_BUFFER_BYTES and not self._paused:
                self._paused = True
                self._transport.pause_reading()
            return
        framed = self._next()
        if framed is not None:
            self._worker = asyncio.get_running_loop().create_task(self._work(framed))

    def eof_received(self) -> bool | None:
        self._eof = True
        # Keep the write side open for the answers still owed; the worker closes the connection after the last.
        return True if self._worker is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._hub.connections.discard(self)
        self.resume_writing()
        self._buf = b""  # a request not yet begun is not answered; one being answered still completes (its push)

    # --- requests --------------------------------------------------------------------------------------------------

    def _next(self) -> Framed | None:
        """The next whole push in the buffer, taken out of it; None when there is none (yet), after handing the
        connection to aiohttp when the next request is not a push this path serves."""
        framed = frame_request(self._buf, PUSH_ROUTES, self._hub.max_body)
        if framed is None:
            if self._paused:
                self._paused = False
                self._transport.resume_reading()
            if self._eof:
                self._transport.close()  # a request cut short by the client's EOF is not answered
            return None
        if framed == HAND_OVER:
            self._hub.connections.discard(self)
            if self._paused:
                self._paused = False
                self._transport.resume_reading()
            buf, self._buf = self._buf, b""
            handler = hand_to_aiohttp(self._transport, self._hub.handler_factory, buf)
            if self._eof:
                # aiohttp would not see the client's EOF (it came before the hand-over) and would keep the
                # connection for its keep-alive timeout: it answers the request it was given, then closes.
                handler.close()
            return None
        return framed

    async def _work(self, framed: Framed | None) -> None:
        hub, transport = self._hub, self._transport
        try:
            while framed is not None:
                started = time.perf_counter()
                head = framed.head
                body = self._buf[framed.body_start:framed.end]
                self._buf = self._buf[framed.end:]
                answer = await self._serve(head, body)
                keep_alive = framed.keep_alive and answer is not _INTERNAL and not hub.stopping
                if transport.is_closing():
                    return
                self._answer(head.version, answer, keep_alive)
                if ACCESS_LOG.isEnabledFor(logging.INFO):
                    peer = transport.get_extra_info("peername")
                    log_request(ACCESS_LOG, peer[0] if isinstance(peer, tuple) else None, head.method, head.target,
                                answer.status, time.perf_counter() - started)
                if not keep_alive:
                    transport.close()
                    return
                if self._drain is not None:
                    await asyncio.shield(self._drain)  # the client reads its answers slowly
                framed = self._next()
        finally:
            self._worker = None
            self._idle_since = asyncio.get_running_loop().time()

    async def _serve(self, head: RequestHead, body: bytes) -> Answer:
        hub = self._hub
        try:
            return await api_answers.guarded(hub.keys, head.header("authorization"),
                                             lambda: api_answers.push(hub.node, body, head.header("idempotency-key")))
        except Exception:
            log.exception("push failed")  # a bug, not the client's fault: answered 500 as aiohttp does
            return _INTERNAL

    def _answer(self, version: tuple[int, int], answer: Answer, keep_alive: bool) -> None:
        self._transport.write(response(answer.status, answer.encoded(), version=version, keep_alive=keep_alive,
                                       date=self._hub.date(), headers=answer.headers))

    def close_if_idle(self, idle_before: float) -> None:
        """Close the connection when no request is being answered and none was answered since `idle_before` (a
        request trickling in for that long is closed too)."""
        if self._worker is None and self._idle_since <= idle_before:
            self._transport.close()
