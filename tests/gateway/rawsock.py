"""Blocking-socket helpers for tests that hold the far ends of connections a relay or a gateway owns."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from bench.wsproto_min import accept_key


def recv_exactly(sock: socket.socket, n: int, *, timeout_s: float = 5.0) -> bytes:
    """Exactly `n` bytes from `sock`; AssertionError on EOF before them."""
    sock.settimeout(timeout_s)
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(min(n - len(chunks), 1 << 20))
        if not chunk:
            raise AssertionError(f"EOF after {len(chunks)} of {n} bytes")
        chunks += chunk
    return bytes(chunks)


def recv_until_eof(sock: socket.socket, *, timeout_s: float = 5.0) -> bytes:
    """Everything `sock` receives until the peer closes."""
    sock.settimeout(timeout_s)
    chunks = bytearray()
    while chunk := sock.recv(65536):
        chunks += chunk
    return bytes(chunks)


def switching_protocols(request_head: bytes) -> bytes:
    """A 101 answering the WebSocket upgrade `request_head` (its Sec-WebSocket-Accept computed from the key)."""
    key = next(line.split(b":", 1)[1].strip() for line in request_head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n")


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """The port of a listener whose accept queue is full: Linux drops further SYNs, so connecting there times out."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(full.getsockname())
        yield int(full.getsockname()[1])
    finally:
        for sock in (*fillers, full):
            sock.close()
