"""The lean WebSocket session: one asyncio Protocol per connection on the loop's transport, no aiohttp objects.

Why: an idle session on aiohttp's `WebSocketResponse` held about 15 KiB (the request, its parser, reader, writer,
heartbeat timers and the handler's coroutine frame). Here an idle session is this protocol, a `FrameParser` and the
`Session`: no task, no timer, no buffer. Client frames are parsed as they arrive (`wsnode/wsframes.py`); text goes
to the shared `Endpoint.on_text` in order, through a worker task that exists only while messages wait. Pings come
from one node-wide timer (`Heartbeats`), not one per session. Whatever aiohttp's path decides (admission, statuses,
close codes, the slow-consumer rule of `Session`) is decided by the same code here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from wsnode import metrics
from wsnode.access_log import ACCESS_LOG, log_request
from wsnode.endpoint import BINARY_REFUSED, Endpoint
from wsnode.errors import WebSocketError
from wsnode.handshake import RequestHead, check_upgrade, refusal, response_101
from wsnode.node import new_id
from wsnode.sessions import CLOSE_TOO_BIG, Session
from wsnode.wsframes import (
    CLOSE_NO_STATUS,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Control,
    FrameParser,
    Message,
    close_frame,
    encode_frame,
    text_frame,
)

log = logging.getLogger("wsnode.wsconn")
PING = encode_frame(OP_PING)
# How long our close frame waits for the peer's before the connection is dropped (aiohttp waits on its receive
# timeout; Session.close aborts after its own bound, 1 s, in any case).
CLOSE_WAIT_S = 2.0


class Heartbeats:
    """Pings for every lean connection from one timer: a ping after `heartbeat_s` without data from the peer, the
    connection dropped when nothing came `heartbeat_s / 2` after it (as aiohttp's `heartbeat=`, without a timer
    handle per session). The timer ticks every quarter of the heartbeat, so each deadline is late by at most that."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.pong_timeout_s = heartbeat_s / 2
        self.connections: set[LeanConnection] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, conn: LeanConnection) -> None:
        self.connections.add(conn)
        if self._timer is None and self.heartbeat_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.heartbeat_s / 4, self._tick)

    def discard(self, conn: LeanConnection) -> None:
        self.connections.discard(conn)

    def _tick(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        for conn in list(self.connections):
            conn.beat(now, self.heartbeat_s, self.pong_timeout_s)
        if self.connections:
            self._timer = asyncio.get_running_loop().call_later(self.heartbeat_s / 4, self._tick)


class LeanHub:
    """What every lean connection of a node shares (one object, referenced, never copied per session)."""

    __slots__ = ("endpoint", "heartbeats")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.heartbeats = Heartbeats(endpoint.node.settings.heartbeat_s)


class WriteFlow(asyncio.Protocol):
    """The transport's write flow control as a future the writer awaits: `_drain` is set while the transport's
    buffer is over its high-water mark (the lean connections write without aiohttp's StreamWriter)."""

    __slots__ = ("_drain",)

    def __init__(self) -> None:
        self._drain: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)


class LeanConnection(WriteFlow):
    """One WebSocket connection after the front read its upgrade request. It is also the `Socket` its `Session`
    writes through (`send_str`, `close`, `closed`)."""

    __slots__ = ("_buf", "_closing", "_hub", "_inbox", "_parser", "_ping_at", "_seen", "_session",
                 "_state", "_transport", "_worker")

    # _state: 0 handshake, 1 open, 2 our close frame sent, 3 gone
    def __init__(self, hub: LeanHub, transport: asyncio.Transport) -> None:
        super().__init__()
        self._hub = hub
        self._transport = transport
        self._state = 0
        self._buf = b""
        self._parser: FrameParser | None = None
        self._session: Session | None = None
        self._seen = 0.0
        self._ping_at = 0.0
        self._inbox: deque[str] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    # --- the handshake -------------------------------------------------------------------------------------------

    def begin(self, head: RequestHead, rest: bytes) -> asyncio.Task[None]:
        """Answer the upgrade request `head`; `rest` is what came after it (early frames)."""
        self._buf = rest
        return asyncio.get_running_loop().create_task(self._open(head))

    async def _open(self, head: RequestHead) -> None:
        endpoint, settings = self._hub.endpoint, self._hub.endpoint.node.settings
        started = time.perf_counter()
        try:
            identity, since = await endpoint.identify(head.header("origin"), head.header("authorization"),
                                                      head.target)
            try:
                upgrade = check_upgrade(head)
            except WebSocketError as exc:
                await endpoint.refuse_after_revocation(identity, exc.status, exc.reason)
            transport = self._transport
            session = Session(new_id(), identity.user, self, max_queue=settings.send_queue_max,
                              rate_per_s=settings.client_rate_per_s, burst=settings.client_burst,
                              abort=transport.abort, transport=transport)
            held, replay = await endpoint.admit(session, identity, since)
        except WebSocketError as exc:
            metrics.HANDSHAKE_REFUSED.labels(str(exc.status)).inc()
            self._refuse(head, exc.status, exc.reason, started)
            return
        except Exception:
            log.exception("upgrade failed")  # a bug, not the client's fault: answered 500 as aiohttp does
            self._refuse(head, 500, "internal server error", started)
            return
        if self._state != 0:  # the client left, or the session was closed (a drain), while it was admitted
            session.closed = True
            await endpoint.node.close_session(session)
            if self._state == 2:
                self._refuse(head, 503, "node is draining", started)
            return
        self._session = session
        self._transport.write(response_101(upgrade.key))
        self._log_access(head, 101, started)
        self._state = 1
        self._parser = FrameParser(settings.max_frame_bytes)
        self._seen = asyncio.get_running_loop().time()
        self._hub.heartbeats.add(self)
        del head, upgrade
        early, self._buf = self._buf, b""
        if early:
            self.data_received(early)  # handled after go_live below: the worker task starts on the next turn
        await endpoint.start(session, identity, held, replay, since)

    def _refuse(self, head: RequestHead, status: int, reason: str, started: float) -> None:
        self._log_access(head, status, started)
        if not self._transport.is_closing():
            self._transport.write(refusal(status, reason))
            self._transport.close()  # a refused upgrade ends its connection (docs/protocol.md)

    def _log_access(self, head: RequestHead, status: int, started: float) -> None:
        peer = self._transport.get_extra_info("peername")
        remote = peer[0] if isinstance(peer, tuple) else "-"
        log_request(ACCESS_LOG, remote, head.method, head.target, status, time.perf_counter() - started)

    # --- the asyncio Protocol --------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            if self._state == 0:  # still in the handshake: kept for when the session is open
                self._buf += data
            return  # after a violation: read and dropped, so the close frame is not lost to a reset
        self._seen = asyncio.get_running_loop().time()
        self._ping_at = 0.0
        try:
            events = self._parser.feed(data)
        except WebSocketError as exc:
            if exc.close_code == CLOSE_TOO_BIG and self._session is not None:
                log.info("session=%s closed for an oversized frame (%d)", self._session.id, CLOSE_TOO_BIG)
            self._fail(exc.close_code, exc.reason)
            return
        for event in events:
            if isinstance(event, Message):
                if isinstance(event.data, str):
                    self._receive_text(event.data)
                elif self._session is not None:
                    self._session.send(BINARY_REFUSED)
            elif isinstance(event, Control):
                self._control(event)

    def eof_received(self) -> bool | None:
        return None  # half-closed: close our side too (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = 3
        self._hub.heartbeats.discard(self)
        self.resume_writing()
        closing = self._closing
        if closing is not None and not closing.done():
            closing.set_result(None)
        session, self._session = self._session, None
        self._parser = None
        if session is not None:
            session.closed = True
            task = asyncio.get_running_loop().create_task(self._hub.endpoint.node.close_session(session))
            _FINISHING.add(task)
            task.add_done_callback(_FINISHING.discard)

    # --- frames --------------------------------------------------------------------------------------------------

    def _receive_text(self, text: str) -> None:
        """Client messages are handled one at a time, in order, as aiohttp's loop does."""
        if self._inbox is None:
            self._inbox = deque()
        self._inbox.append(text)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._inbox and self._session is not None and self._state == 1:
                if not await self._hub.endpoint.on_text(self._session, self._inbox.popleft()):
                    break
        finally:
            self._worker = None
            self._inbox = None

    def _control(self, event: Control) -> None:
        if event.opcode == OP_PING:
            if self._state == 1:
                self._transport.write(encode_frame(OP_PONG, event.payload))
        elif event.opcode == OP_CLOSE:
            closing = self._closing
            if closing is not None:  # the answer to our close frame
                if not closing.done():
                    closing.set_result(None)
                return
            if self._state == 1:
                # Echo the peer's code (an empty close for one without a code), then let the transport flush.
                self._state = 2
                code = event.code
                self._transport.write(close_frame(code) if code != CLOSE_NO_STATUS else encode_frame(OP_CLOSE))
            self._transport.close()

    def _fail(self, code: int, reason: str) -> None:
        """A protocol violation: close with its code, and stop reading the peer."""
        self._parser = None
        if self._state == 1:
            self._state = 2
            self._transport.write(close_frame(code, reason))
        # Closing now, with the rest of an oversized frame unread, would make the kernel send a reset that can
        # overtake the close frame: let the peer close (EOF), or close after a bound.
        asyncio.get_running_loop().call_later(CLOSE_WAIT_S, self._transport.close)

    def beat(self, now: float, heartbeat_s: float, pong_timeout_s: float) -> None:
        """The node-wide timer's visit: ping an idle peer, drop one that did not answer the last ping in time."""
        if self._state != 1:
            return
        if self._ping_at:
            if now - self._ping_at >= pong_timeout_s:
                self._transport.abort()  # as aiohttp: no close frame to a peer that no longer answers
        elif now - self._seen >= heartbeat_s:
            self._ping_at = now
            self._transport.write(PING)

    # --- the Socket a Session writes through ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state >= 2

    async def send_str(self, data: str, compress: int | None = None) -> None:
        if self._state != 1:
            raise ConnectionResetError("the WebSocket is closing")
        self._transport.write(text_frame(data))
        if self._drain is not None:
            # The peer reads slowly: wait (so the Session's queue, and its slow-consumer limit, take the rest).
            await asyncio.shield(self._drain)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if self._state >= 2:
            return False
        if self._state == 0:  # closed before its 101: _open answers the upgrade with a refusal instead
            self._state = 2
            return True
        self._state = 2
        self._transport.write(close_frame(code, message.decode("utf-8", "ignore")))
        self._closing = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closing), CLOSE_WAIT_S)
        self._transport.close()
        return True


_FINISHING: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
