"""A lean pub/sub connection for the node's own channels: each message is handed on as soon as it is parsed.

redis-py's `PubSub.get_message` wakes a task per message, reads it through a `StreamReader` and opens a timeout
scope per call; on the node holding a session that was about a fifth of its CPU per push (`bench/RESULTS.md`, "A
lean subscription"). Here hiredis parses what arrives in the Protocol's `data_received` and `on_message(channel,
data)` runs right there. The subscription loop's rules (`wsnode/delivery.py`: confirmations, heartbeats as proof of
life, stall detection, resubscribe with backoff) stay in the loop; this module only connects (with the shard's
`LaneTarget`: its address, AUTH, SELECT, client name and timeouts), subscribes, and reports the end of the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError

from wsnode.redis_lane import LaneTarget, encode

OnMessage = Callable[[bytes, bytes], None]


class Subscription(asyncio.Protocol):
    """One subscribed connection. `ready` resolves once the setup commands succeeded and every channel is confirmed;
    `ended` resolves (None after `close`, else a RedisError) when the connection is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: LaneTarget, channels: Sequence[str],
                 on_message: OnMessage, *, hold: bool = False) -> None:
        self._target = target
        self._channels = list(channels)
        self._on_message = on_message
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self._transport: asyncio.Transport | None = None
        self._setup_left = len(target.setup)
        self._unconfirmed = len(self._channels)
        self._held: list[tuple[bytes, bytes]] | None = [] if hold else None
        self._closing = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ended: asyncio.Future[None] = loop.create_future()
        # Whoever stops waiting on them (a cancelled loop) must not leave an unread error behind.
        self.ready.add_done_callback(_quiet)
        self.ended.add_done_callback(_quiet)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._transport.write(encode([*self._target.setup, ("SUBSCRIBE", *self._channels)]))

    @property
    def held(self) -> int:
        """How many messages are held back."""
        return len(self._held or ())

    def release(self) -> None:
        """Hand on the messages held back since the subscription started (`hold`), then each as it comes."""
        held, self._held = self._held, None
        for channel, data in held or ():
            self._on_message(channel, data)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self._end(exc)
                return
            if reply is False:
                return
            if self._setup_left:
                self._setup_left -= 1
                if isinstance(reply, Exception):  # a wrong password, a database out of range
                    self._end(reply)
                    return
                continue
            if isinstance(reply, RedisError):
                self._end(reply)
                return
            self._push(reply)

    def _push(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"message" and len(reply) == 3:
            if self._held is not None:
                self._held.append((reply[1], reply[2]))
            else:
                self._on_message(reply[1], reply[2])
        elif kind == b"subscribe":
            self._unconfirmed -= 1
            if self._unconfirmed == 0 and not self.ready.done():
                self.ready.set_result(None)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
        else:
            self._end(None)

    def _end(self, error: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(error or RedisConnectionError(f"subscription to {self._target.where} closed"))
        if not self.ended.done():
            if error is None:
                self.ended.set_result(None)
            else:
                self.ended.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._end(None if self._closing else RedisConnectionError(
            f"Connection closed by server ({self._target.where})."))


def _quiet(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def subscribe(target: LaneTarget, channels: Sequence[str], on_message: OnMessage, *,
                    timeout_s: float, hold: bool = False) -> Subscription:
    """A subscription with every channel confirmed; TimeoutError when connecting and confirming took over `timeout_s`
    (over a stalled link), redis-py's errors for a refused connect or a refused setup command. With `hold`, messages
    are kept back, in order, until `release()` (the caller first resends what may have been missed)."""
    loop = asyncio.get_running_loop()
    subscription: Subscription | None = None
    try:
        async with asyncio.timeout(timeout_s):
            subscription = await target.open(lambda: Subscription(loop, target, channels, on_message, hold=hold))
            await subscription.ready
    except BaseException:
        if subscription is not None:
            subscription.close()
        raise
    return subscription
