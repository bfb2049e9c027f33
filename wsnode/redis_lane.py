"""A lean pipelined Redis connection for the push script, the node's hottest Redis call.

redis-py spends several times the CPU of the call itself around each command: a pool checkout and check-in, a
timeout scope, and a stream read per reply (about 90 us against 20-30 us for the same EVALSHA on an asyncio
Protocol with hiredis, `bench/RESULTS.md`, "A lean Redis lane for the push script"). At a steady push rate each push
is its own round trip, so that overhead is paid per push. A lane is one connection per shard: commands are written
as they come (pipelined behind each other), hiredis parses the replies, and each batch's future gets its replies in
order.

The rules are redis-py's, as the node configures it (`wsnode/app.py`): the same connect and read timeouts, no retry
(a push that failed is answered 503 and retried by its sender with its Idempotency-Key), error replies mapped to the
same exception classes (redis-py's own table, so `NoScriptError` and `ReadOnlyError` stay what callers catch), and
the same client name, so `CLIENT LIST` and `CLIENT KILL` see the lane as one of the node's connections. A timeout or
a lost connection fails every batch in flight (their replies could no longer be matched) and the next batch
reconnects. Only plain TCP and unix-socket Redis gets a lane (`RedisLane.for_pool`); TLS, Sentinel and Cluster keep
redis-py's connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser  # redis-py's one table of error replies to exception classes
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[str | int | bytes]


def encode(commands: Sequence[Command]) -> bytes:
    """The RESP2 bytes of `commands`, as redis-py writes them (str as UTF-8, int as decimal text)."""
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            else:
                data = b"%d" % arg
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


P = TypeVar("P", bound=asyncio.BaseProtocol)


@dataclass(frozen=True)
class LaneTarget:
    """Where a lean connection goes and what it sends first (AUTH, SELECT, CLIENT SETNAME), with redis-py's timeouts
    as the node configures its pool: the lane and the lean subscription (`wsnode/subscriber.py`) share it."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    setup: tuple[Command, ...] = ()
    read_timeout_s: float | None = None
    connect_timeout_s: float | None = None

    @property
    def where(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    async def open(self, factory: Callable[[], P]) -> P:
        """A connected protocol from `factory`; redis-py's errors (and messages) for a refused or slow connect."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.path is not None:
                    _, protocol = await loop.create_unix_connection(factory, self.path)
                else:
                    _, protocol = await loop.create_connection(factory, self.host, self.port)
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to server") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error {exc.errno} connecting to {self.where}. {exc.strerror}.") from None
        return protocol


class _Batch:
    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []


class _LaneProtocol(asyncio.Protocol):
    """One connection: batches in the order written, each answered when its last reply arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str, read_timeout_s: float | None) -> None:
        self._loop = loop
        self._where = where
        self._read_timeout_s = read_timeout_s
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self._batches: collections.deque[_Batch] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when the oldest unanswered batch started waiting for bytes
        self.closed: asyncio.Future[None] = loop.create_future()

    @property
    def busy(self) -> bool:
        return bool(self._batches)

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        transport = self._transport
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if transport is None or transport.is_closing():
            future.set_exception(RedisConnectionError(f"Connection closed by server ({self._where})."))
            return future
        if not self._batches:
            self._waiting_since = self._loop.time()
            if self._timer is None and self._read_timeout_s is not None:
                self._timer = self._loop.call_later(self._read_timeout_s, self._check_timeout)
        self._batches.append(_Batch(future, len(commands)))
        transport.write(encode(commands))
        return future

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        batches = self._batches
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self._fail(exc)
                return
            if reply is False:
                break
            if not batches:  # a reply nobody asked for: the connection is out of step
                self._fail(InvalidResponse(f"unexpected reply from {self._where}"))
                return
            batch = batches[0]
            batch.replies.append(reply)
            batch.left -= 1
            if batch.left == 0:
                batches.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)
        self._waiting_since = self._loop.time()

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._batches or self._read_timeout_s is None:
            return
        left = self._waiting_since + self._read_timeout_s - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_timeout)
            return
        self._fail(RedisTimeoutError(f"Timeout reading from {self._where}"))

    def _fail(self, error: RedisError) -> None:
        """Every batch in flight fails with `error` and the connection is dropped (its replies would be misread)."""
        batches, self._batches = self._batches, collections.deque()
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close: Redis closing its side ends the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(RedisConnectionError(f"Connection closed by server ({self._where})."))
        if not self.closed.done():
            self.closed.set_result(None)


class RedisLane:
    """One shard's lane: `await lane.execute([(b"EVALSHA", sha, 0, ...), ...])` answers every reply, in order, an
    error reply as its exception object (not raised); connection failures and timeouts raise for the whole batch."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None,
                 username: str | None = None, password: str | None = None, db: int = 0,
                 client_name: str | None = None, socket_timeout: float | None = None,
                 socket_connect_timeout: float | None = None) -> None:
        setup: list[Command] = []
        if password is not None:
            setup.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            setup.append(("SELECT", db))
        if client_name:
            setup.append(("CLIENT", "SETNAME", client_name))
        self.target = LaneTarget(host=host, port=port, path=path, setup=tuple(setup), read_timeout_s=socket_timeout,
                                 connect_timeout_s=socket_connect_timeout)
        self.where = self.target.where
        self._protocol: _LaneProtocol | None = None
        self._connecting: asyncio.Task[_LaneProtocol] | None = None
        self._closed = False

    @classmethod
    def for_pool(cls, pool: aioredis.ConnectionPool) -> RedisLane | None:
        """A lane with the connection settings of `pool`'s connections; None when they are not plain TCP or a unix
        socket (TLS, Sentinel) or use what a lane does not do (a credential provider, RESP3)."""
        kwargs = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None or kwargs.get("protocol") not in (None, 2, "2"):
            return None
        common: dict[str, Any] = {
            "username": kwargs.get("username"), "password": kwargs.get("password"), "db": int(kwargs.get("db") or 0),
            "client_name": kwargs.get("client_name"), "socket_timeout": kwargs.get("socket_timeout"),
            "socket_connect_timeout": kwargs.get("socket_connect_timeout")}
        if pool.connection_class is aioredis.Connection:
            return cls(host=kwargs.get("host", "localhost"), port=int(kwargs.get("port", 6379)), **common)
        if pool.connection_class is aioredis.UnixDomainSocketConnection:
            return cls(path=kwargs["path"], **common)
        return None

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Every command's reply, in order (error replies as exception objects)."""
        protocol = self._protocol
        if protocol is None or not protocol.usable:
            protocol = await self._connected()
        return await protocol.send(commands)

    async def _connected(self) -> _LaneProtocol:
        if self._closed:
            raise RedisConnectionError(f"the lane to {self.where} is closed")
        if self._connecting is None:  # one connect for every batch that finds the lane without a connection
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            # Its failure is each waiter's to raise; with every waiter cancelled, nobody is left to be told.
            self._connecting.add_done_callback(lambda task: task.cancelled() or task.exception())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _connect(self) -> _LaneProtocol:
        loop = asyncio.get_running_loop()
        target = self.target
        protocol = await target.open(lambda: _LaneProtocol(loop, target.where, target.read_timeout_s))
        if target.setup:
            for reply in await protocol.send(target.setup):
                if isinstance(reply, Exception):  # a wrong password, a database out of range
                    protocol.abort()
                    raise reply
        if self._closed:
            protocol.abort()
            raise RedisConnectionError(f"the lane to {self.where} is closed")
        self._protocol = protocol
        return protocol

    def drop(self, *, only_idle: bool = False) -> None:
        """Drop the connection, as redis-py's `pool.disconnect()` drops its connections (a stalled link, Redis back
        after a gap); the next batch connects again. `only_idle`: not while batches wait on it."""
        protocol = self._protocol
        if protocol is not None and not (only_idle and protocol.busy):
            self._protocol = None
            protocol.abort()

    async def aclose(self) -> None:
        """Close the connection (batches still in flight fail)."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._connecting
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort()
            await protocol.closed


class LanedPool(aioredis.BlockingConnectionPool):
    """The node's blocking pool for one shard, with that shard's lane: whoever drops the pool's connections (a stalled
    subscription, the recovery after Redis comes back) drops the lane's connection with them."""

    lane: RedisLane | None = None

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if self.lane is not None:
            self.lane.drop(only_idle=not inuse_connections)
