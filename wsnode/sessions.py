"""Local sessions: bounded outgoing queues, the replay/live seam, and the per-user index of this node.

Ordering at the seam: a session starts in replay mode, where every live delivery is buffered; the node then reads
the store and calls `finish_replay`, which sends the welcome, the stored frames, then the buffered live frames whose
id is beyond the last replayed one. Afterwards a stored message is sent only when its id is newer than the last one
sent, so a message both replayed and published arrives once.

Gaps: a user's stored ids grow by one, so a stored message whose id is beyond the next one expected shows that a
publication never reached this node (a stalled subscription, a lapse of presence). The session then buffers again,
as at the seam, and the node fills the gap from the store (`finish_catch_up`) before the buffered frames go out: the
client sees the ids in order, without the gap. The same catch-up resends what a session may have missed whenever the
node registers its sessions again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from wsnode import metrics
from wsnode.envelope import encode_message, encode_unread, ephemeral_id, text_frame

log = logging.getLogger("wsnode.sessions")

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013  # the node cannot route (docs/operations.md): reconnect through the gateway
CLOSE_SLOW_CONSUMER = 4008


_BACKGROUND: set[asyncio.Task[None]] = set()
# Above this many bytes waiting in the kernel-side write buffer, frames go through the queue (and its slow-consumer
# limit) instead of straight to the transport.
DIRECT_WRITE_MAX_BUFFERED_BYTES = 64 * 1024


class Socket(Protocol):
    """What a session needs of a WebSocket (aiohttp's WebSocketResponse has it)."""

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool: ...

    @property
    def closed(self) -> bool: ...


class WireTransport(Protocol):
    """The connection under the WebSocket, for writing whole prebuilt frames (asyncio/uvloop transports have it)."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class Session:
    """One client connection on this node."""

    __slots__ = ("_abort", "_bucket", "_bucket_at", "_buffer", "_burst", "_max_queue", "_queue", "_rate",
                 "_transport", "_writer", "closed", "id", "last_id", "socket", "user")

    def __init__(self, session_id: str, user: str, socket: Socket, *, max_queue: int, rate_per_s: float,
                 burst: int, abort: Callable[[], None], transport: WireTransport | None = None) -> None:
        """`transport`, when given, takes whole uncompressed frames directly (no compression negotiated)."""
        self.id = session_id
        self.user = user
        self.socket = socket
        self.last_id = 0
        self.closed = False
        self._buffer: list[tuple[int | None, str, str]] | None = []
        # Created on first use and dropped when empty: an idle session holds no queue (memory per session).
        self._queue: deque[str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._max_queue = max_queue
        self._rate = rate_per_s
        self._burst = float(burst)
        self._bucket = float(burst)
        self._bucket_at = time.monotonic()
        self._abort = abort
        self._transport = transport

    @property
    def replaying(self) -> bool:
        """True until finish_replay (and while catching up after a gap): live deliveries are buffered meanwhile."""
        return self._buffer is not None

    def allow_client_frame(self) -> bool:
        """Token bucket for client frames; False means the client floods."""
        now = time.monotonic()
        self._bucket = min(self._burst, self._bucket + (now - self._bucket_at) * self._rate)
        self._bucket_at = now
        if self._bucket < 1.0:
            return False
        self._bucket -= 1.0
        return True

    def send(self, frame: str) -> None:
        """Queue a frame that is not a stored message (welcome, pong, unread, error)."""
        if self._buffer is not None:
            self._buffer.append((None, "raw", frame))
        else:
            self._enqueue(frame)

    def deliver_stored(self, seq: int, frame: str) -> bool:
        """A stored message; sent only if newer than the last stored message this session got.

        True when `seq` is beyond the next id expected: the session then buffers (`catching up`) and the caller must
        have the gap filled (`finish_catch_up`).
        """
        if self._buffer is not None:
            self._buffer.append((seq, "raw", frame))
            return False
        if seq <= self.last_id:
            return False
        if not self._next(seq):
            self._buffer = [(seq, "raw", frame)]
            return True
        self.last_id = seq
        self._enqueue(frame)
        return False

    def deliver_stored_and_unread(self, seq: int, frame: str, counts: dict[str, int]) -> bool:
        """A stored message and the user's new unread counts; one write (one system call) when both go out now.

        True when a gap showed (as `deliver_stored`)."""
        if (self._buffer is None and not self.closed and self._next(seq) and self._writer is None
                and self._transport is not None
                and self._write_now(text_frame(frame) + text_frame(encode_unread(counts)))):
            self.last_id = seq
            metrics.MESSAGES_OUT.inc()  # the second frame of the write
            return False
        gap = self.deliver_stored(seq, frame)
        self.deliver_unread(counts)
        return gap

    def _next(self, seq: int) -> bool:
        """Whether `seq` is the next stored id this session expects (any id when it has seen none)."""
        return seq == self.last_id + 1 or (self.last_id == 0 and seq > 0)

    def begin_catch_up(self) -> bool:
        """Buffer live deliveries until `finish_catch_up`; False when the session is already buffering."""
        if self._buffer is not None:
            return False
        self._buffer = []
        return True

    def finish_catch_up(self, frames: list[tuple[int, str]]) -> None:
        """Send the stored `frames` newer than the last id sent (read from the store after a gap, in id order), then
        what was buffered meanwhile, and go live. A gap the store could not fill (trimmed, or the store unreachable)
        is let through: the client detects it and resumes (docs/protocol.md)."""
        buffered, self._buffer = self._buffer or [], None
        self._release([(seq, "raw", frame) for seq, frame in frames], check_gaps=False)
        self._release(buffered, check_gaps=False)

    def _release(self, items: list[tuple[int | None, str, str]], *, check_gaps: bool) -> bool:
        """Send buffered items in order; with `check_gaps`, stop at a gap and keep buffering from there (True)."""
        for index, (seq, kind, text) in enumerate(items):
            if seq is not None:
                if seq <= self.last_id:
                    continue  # replayed or sent already
                if check_gaps and not self._next(seq):
                    self._buffer = items[index:]
                    return True
                self.last_id = seq
                self._enqueue(text)
            elif kind == "raw":
                self._enqueue(text)
            else:
                self.deliver_ephemeral(kind, text)
        return False

    def deliver_ephemeral(self, push_id: str, tail: str) -> None:
        """A message that is not stored (store:false or broadcast); its id refers to the last stored id."""
        if self._buffer is not None:
            self._buffer.append((None, push_id, tail))
        else:
            self._enqueue(encode_message(ephemeral_id(self.last_id, push_id), tail))

    def send_wire(self, frame: str, wire: bytes) -> None:
        """Like `send`, with `frame` already encoded as a WebSocket frame (`text_frame`), shared by many sessions."""
        if self._buffer is not None:
            self._buffer.append((None, "raw", frame))
        elif not self.closed and not self._write_now(wire):
            self._enqueue(frame)

    def deliver_unread(self, counts: dict[str, int]) -> None:
        """New unread counts of the user."""
        self.send(encode_unread(counts))

    def finish_replay(self, welcome: str, frames: list[tuple[int, str]], *, position: int) -> bool:
        """Send welcome, replayed frames, then what arrived live meanwhile (ids beyond `position`), and go live.

        `position` is the user's last stored id when the store was read: everything up to it was replayed or is
        already read (or trimmed), so only newer stored ids may follow. True when a buffered id showed a gap (see
        `deliver_stored`).
        """
        self._enqueue_all([welcome, *(frame for _, frame in frames)])
        if frames:
            self.last_id = frames[-1][0]
        self.last_id = max(self.last_id, position)
        buffered, self._buffer = self._buffer or [], None
        return self._release(buffered, check_gaps=True)

    def _write_now(self, wire: bytes) -> bool:
        """Write a whole frame straight to the transport when nothing is queued before it and the peer keeps up.

        Saves a writer task per frame; aiohttp writes its own frames (pings, close) whole too, so frames never mix.
        """
        transport = self._transport
        if (transport is None or self._writer is not None or self.socket.closed or transport.is_closing()
                or transport.get_write_buffer_size() > DIRECT_WRITE_MAX_BUFFERED_BYTES):
            return False
        transport.write(wire)
        metrics.MESSAGES_OUT.inc()
        return True

    def _enqueue_all(self, frames: list[str]) -> None:
        """`_enqueue` each of `frames` in order, those that go straight to the transport joined into few writes: a
        replay of N stored frames was N system calls (bench/RESULTS.md, issue 19).

        A frame joins the pending write only while the transport's buffer, as last read, plus the bytes pending stays
        within DIRECT_WRITE_MAX_BUFFERED_BYTES: the buffer before it cannot be larger, so `_enqueue` would have sent
        it straight too. Past that, the pending bytes are written and the buffer is read again; the frames left when
        the transport no longer takes them go through `_enqueue` (its queue, its slow-consumer limit)."""
        transport, done = self._transport, 0
        while (done < len(frames) and transport is not None and not self.closed and self._writer is None
               and not self.socket.closed and not transport.is_closing()):
            buffered = transport.get_write_buffer_size()
            if buffered > DIRECT_WRITE_MAX_BUFFERED_BYTES:
                break
            chunk: list[bytes] = []
            while done < len(frames) and buffered <= DIRECT_WRITE_MAX_BUFFERED_BYTES:
                wire = text_frame(frames[done])
                chunk.append(wire)
                buffered += len(wire)
                done += 1
            transport.write(b"".join(chunk))
            metrics.MESSAGES_OUT.inc(len(chunk))
        for frame in frames[done:]:
            self._enqueue(frame)

    def _enqueue(self, frame: str) -> None:
        if self.closed:
            return
        if self._transport is not None and self._writer is None and self._write_now(text_frame(frame)):
            return
        if self._queue is None:
            self._queue = deque()
        elif len(self._queue) >= self._max_queue:
            metrics.QUEUE_DROPS.inc()
            log.warning("slow consumer: closing session=%s user=%s", self.id, self.user)
            self.close_soon(CLOSE_SLOW_CONSUMER, "slow consumer")
            return
        self._queue.append(frame)
        metrics.MESSAGES_OUT.inc()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            # Runs on after close() began, so queued frames still go out before the close frame.
            while self._queue:
                await self.socket.send_str(self._queue.popleft())
        except (ConnectionError, RuntimeError):
            self.closed = True
        finally:
            self._writer = None
            if not self._queue:
                self._queue = None

    def close_soon(self, code: int, reason: str) -> None:
        """Close in the background (from synchronous code)."""
        if not self.closed:
            task = asyncio.get_running_loop().create_task(self.close(code, reason))
            _BACKGROUND.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(_BACKGROUND.discard)

    async def close(self, code: int, reason: str, *, timeout_s: float = 1.0) -> None:
        """Close with `code`; abort the connection when the peer does not take the close frame in time."""
        if self.closed:
            return
        self.closed = True
        metrics.CLOSES.labels(str(code)).inc()
        writer, self._writer = self._writer, None
        if writer is not None and code == CLOSE_SLOW_CONSUMER:
            writer.cancel()
        elif writer is not None:
            # Let queued frames go out first, within the timeout.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
            writer.cancel()
        self._queue = None
        # A peer that reads nothing never lets the close frame out: aiohttp's close() then either waits or closes
        # the transport gracefully, which waits for a flush that never comes. Cutting the connection after the
        # timeout ends both (it is a no-op when the connection closed normally).
        asyncio.get_running_loop().call_later(timeout_s, self._abort)
        try:
            await self.socket.close(code=code, message=reason.encode()[:120])
        except Exception as exc:
            log.info("aborting session=%s after close(%d) failed: %r", self.id, code, exc)
            self._abort()


class LocalSessions:
    """The sessions of this node, by id and by user."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_user: dict[str, dict[str, Session]] = {}
        # Token expiries as (epoch seconds, session id) under one timer for all sessions: a timer per session costs
        # more memory than the rest of what an idle session holds of ours. Ids of gone sessions are skipped.
        self._expiries: list[tuple[float, str]] = []
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_due = 0.0

    def expire_at(self, session: Session, expires_at: float) -> None:
        """Close `session` with 1008 "token expired" at `expires_at` (epoch seconds) unless it is gone by then."""
        heapq.heappush(self._expiries, (expires_at, session.id))
        if self._expiry_timer is None or expires_at < self._expiry_due:
            self._arm_expiry_timer()

    def _arm_expiry_timer(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if self._expiries:
            self._expiry_due = self._expiries[0][0]
            loop = asyncio.get_running_loop()
            self._expiry_timer = loop.call_at(loop.time() + max(0.0, self._expiry_due - time.time()), self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        now = time.time()
        while self._expiries and self._expiries[0][0] <= now:
            _, session_id = heapq.heappop(self._expiries)
            session = self._by_id.get(session_id)
            if session is not None:
                session.close_soon(CLOSE_POLICY, "token expired")
        self._arm_expiry_timer()

    def add(self, session: Session) -> None:
        """Index a new session (in replay mode, so live deliveries are buffered from now on)."""
        self._by_id[session.id] = session
        self._by_user.setdefault(session.user, {})[session.id] = session
        metrics.SESSIONS.set(len(self._by_id))

    def remove(self, session: Session) -> None:
        """Drop a session from the index."""
        self._by_id.pop(session.id, None)
        users = self._by_user.get(session.user)
        if users is not None:
            users.pop(session.id, None)
            if not users:
                del self._by_user[session.user]
        metrics.SESSIONS.set(len(self._by_id))
        if len(self._expiries) > 2 * len(self._by_id) + 64:
            # Mostly entries of gone sessions (long-lived tokens, short sessions): drop them, amortised O(1).
            self._expiries = [entry for entry in self._expiries if entry[1] in self._by_id]
            heapq.heapify(self._expiries)

    def of_user(self, user: str) -> list[Session]:
        """The user's sessions here."""
        return list(self._by_user.get(user, {}).values())

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def pairs(self) -> list[tuple[str, str]]:
        """(session id, user) of every session."""
        return [(s.id, s.user) for s in self._by_id.values()]
