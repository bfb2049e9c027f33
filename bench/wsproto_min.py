"""The least WebSocket framing a load generator and an echo upstream need (RFC 6455), kept cheap on purpose."""

from __future__ import annotations

import base64
import hashlib
import os
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def client_handshake(path: str, host: str) -> tuple[bytes, bytes]:
    """An upgrade request and the accept value the server must answer."""
    key = base64.b64encode(os.urandom(16))
    head = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    return head, accept_key(key)


def frame(payload: bytes, *, opcode: int = 0x2, mask: bool) -> bytes:
    """One final frame; client frames are masked (with a zero key: valid, and free to apply)."""
    n = len(payload)
    first = 0x80 | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    return head + (b"\x00\x00\x00\x00" if mask else b"") + payload


def parse_frames(buf: bytearray) -> list[tuple[int, bytes, bytes]]:
    """Remove complete frames from `buf`: (opcode, payload unmasked, mask key or b'')."""
    out: list[tuple[int, bytes, bytes]] = []
    while len(buf) >= 2:
        b1 = buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack_from("!H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack_from("!Q", buf, 2)[0]
            pos = 10
        key = b""
        if b1 & 0x80:
            key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            break
        payload = bytes(buf[pos:pos + n])
        if key and key != b"\x00\x00\x00\x00":
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        out.append((buf[0] & 0x0F, payload, key))
        del buf[:pos + n]
    return out
