"""h11 as the reference framer of HTTP/1.1 requests, an upstream that records exactly what it receives, and one
that follows a script byte for byte.

The differential framing suite (`test_framing_differential.py`) and the fuzz tests (`test_framing_fuzz.py`) judge
the gateway against h11: what h11 frames as requests from a client's bytes is what an instance must receive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# Not compared: what a proxy is meant to change (hop-by-hop headers, Host, X-Forwarded-*, the Expect it answers).
_NOT_COMPARED = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"te",
    b"trailer", b"upgrade", b"host", b"expect",
})


@dataclass(frozen=True)
class Message:
    """One request as framed: what an instance acts on (the version is the proxy's to choose)."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    trailers: tuple[tuple[bytes, bytes], ...]


@dataclass
class Framed:
    """The requests h11 reads from some bytes, and how the reading ended."""

    messages: list[Message] = field(default_factory=list)
    error: str | None = None  # h11 refused the bytes after `messages`
    incomplete: bool = False  # bytes of an unfinished message are left over

    @property
    def complete(self) -> bool:
        return self.error is None and not self.incomplete


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    named = {token.strip().lower() for name, value in headers if name == b"connection" for token in value.split(b",")}
    return tuple((name, value) for name, value in headers
                 if name not in _NOT_COMPARED and name not in named and not name.startswith(b"x-forwarded-"))


class _Reader:
    """An h11 server connection that answers each request at once (so the next one can be read)."""

    def __init__(self) -> None:
        self.conn = h11.Connection(h11.SERVER)
        self.request: h11.Request | None = None  # the message being read
        self.last: h11.Request | None = None  # the last one read in full
        self.body = bytearray()

    def next_message(self) -> tuple[Message | None, bool]:
        """(the next complete message or None, whether the connection goes on after it); raises h11's errors."""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return None, False
            if isinstance(event, h11.Request):
                self.request, self.body = event, bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                request = self.request
                assert request is not None
                headers = list(request.headers)
                message = Message(request.method, request.target, _end_to_end(headers), bytes(self.body),
                                  tuple(event.headers))
                self.request, self.last = None, request
                self.conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
                self.conn.send(h11.EndOfMessage())
                if self.conn.our_state is h11.MUST_CLOSE:
                    return message, False
                self.conn.start_next_cycle()
                return message, True


def _keeps_1_0_alive(headers: list[tuple[bytes, bytes]]) -> bool:
    tokens = {t.strip().lower() for name, value in headers if name == b"connection" for t in value.split(b",")}
    return b"keep-alive" in tokens and b"close" not in tokens


def frame_requests(data: bytes) -> Framed:
    """The requests in `data` (one client connection's bytes) as h11 frames them.

    h11 never keeps an HTTP/1.0 connection alive; `Connection: keep-alive` does (RFC 9112 section 9.3), and how a
    1.0 message ends does not depend on it: after such a request the rest is read by a fresh h11 connection.
    """
    framed = Framed()
    rest = data
    while True:
        reader = _Reader()
        reader.conn.receive_data(rest)
        try:
            while True:
                message, goes_on = reader.next_message()
                if message is None:
                    framed.incomplete = bool(reader.conn.trailing_data[0]) or reader.request is not None
                    return framed
                framed.messages.append(message)
                if not goes_on:
                    break
        except h11.RemoteProtocolError as error:
            framed.error = str(error)
            return framed
        request = reader.last
        assert request is not None
        if request.http_version != b"1.0" or not _keeps_1_0_alive(list(request.headers)):
            return framed
        rest = bytes(reader.conn.trailing_data[0])
        if not rest:
            return framed


class RecordingUpstream:
    """A raw TCP server that records every byte each connection receives and answers each request h11 reads
    with `200` and `ok`; it closes a connection whose bytes h11 refuses."""

    def __init__(self) -> None:
        self.connections: list[bytearray] = []
        self.messages: list[Message] = []  # complete requests, in the order they were read
        self.errors: list[str] = []
        self.unfinished = 0  # connections that ended inside a message
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        received = bytearray()
        self.connections.append(received)
        parser = _Reader()
        try:
            while True:
                data = await reader.read(65536)
                received += data
                parser.conn.receive_data(data)
                while True:
                    message, goes_on = parser.next_message()
                    if message is None:
                        break
                    self.messages.append(message)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    if not goes_on:
                        return
                if not data:
                    if parser.request is not None or parser.conn.trailing_data[0]:
                        self.unfinished += 1
                    return
        except h11.RemoteProtocolError as error:
            self.errors.append(str(error))
        except ConnectionError:
            self.unfinished += 1
        finally:
            writer.close()

    async def settled(self, timeout_s: float = 15.0) -> None:
        """Wait until every connection has ended (the gateway closed them all)."""
        pending = {task for task in self._handlers if not task.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s)
            assert not still, f"{len(still)} upstream connection(s) still open"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class ScriptedUpstream:
    """Runs `script(reader, writer, n)` for its n-th accepted connection; notes when each connection ended."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.ended: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        index = self.accepted
        self.accepted += 1
        ended = asyncio.Event()
        self.ended.append(ended)
        try:
            await self.script(reader, writer, index)
            await reader.read()  # until the gateway closes its side
        except ConnectionError:
            pass
        finally:
            ended.set()
            writer.close()

    async def close(self) -> None:
        """Stop listening and end every connection still open."""
        if self._server is not None:
            self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


@dataclass(frozen=True)
class Answer:
    """A final response the client received: status and body."""

    status: int
    body: bytes


async def read_answers(reader: asyncio.StreamReader, *, count: int | None, timeout_s: float = 15.0) -> list[Answer]:
    """Final responses (1xx skipped) until `count` of them, a 4xx/5xx from the gateway, or EOF (count None: EOF)."""
    answers: list[Answer] = []
    async with asyncio.timeout(timeout_s):
        while count is None or len(answers) < count:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return answers
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            if 100 <= status < 200:
                continue
            length = next((int(line.split(":", 1)[1]) for line in lines[1:]
                           if line.lower().startswith("content-length:")), 0)
            try:
                answers.append(Answer(status, await reader.readexactly(length)))
            except asyncio.IncompleteReadError:
                return answers  # closed inside the body: no whole answer
            if status >= 400:
                return answers
    return answers
