"""The WebSocket opening handshake (pure): a request head parsed and checked, the 101 and refusals built.

RFC 6455 section 4.2.1 lists what a server must check; each failure is a `WebSocketError` carrying the HTTP status
to answer with (400, 405 with `Allow: GET`, 426 with `Sec-WebSocket-Version: 13`, 431 for an oversized head). The
token is looked for where the aiohttp endpoint looks for it (`wsnode.auth.extract_token`: `Authorization: Bearer`,
then `?token=`), so both paths admit the same clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl

from wsnode.auth import extract_token
from wsnode.errors import WebSocketError
from wsnode.wsframes import accept_key

MAX_HEAD_BYTES = 16 * 1024  # aiohttp's own limits are 8 KiB a line and a header field; a whole head fits this
MAX_HEADERS = 100
HEAD_END = b"\r\n\r\n"
SUPPORTED_VERSION = "13"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: header names and methods
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\x00-\x20\x7f]+) HTTP/(\d)\.(\d)")
# Control characters, which RFC 9110 section 5.5 keeps out of field values (horizontal tab aside).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head: header names lower-cased, values stripped, in arrival order (repeats kept)."""

    method: str
    target: str
    version: tuple[int, int]
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower case), None when absent."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every `name` header, lower-cased (Connection, Upgrade)."""
        return {t.strip().lower() for key, value in self.headers if key == name for t in value.split(",")} - {""}

    @property
    def path(self) -> str:
        """The raw path, without the query string."""
        return self.target.partition("?")[0]

    def query(self) -> dict[str, str]:
        """The first value of each query parameter."""
        params: dict[str, str] = {}
        for name, value in parse_qsl(self.target.partition("?")[2], keep_blank_values=True):
            params.setdefault(name, value)
        return params


def head_length(buf: bytes) -> int:
    """The length of the head at the start of `buf` (through its blank line), or -1 while it is incomplete;
    WebSocketError(431) once more than MAX_HEAD_BYTES came without one."""
    end = buf.find(HEAD_END, 0, MAX_HEAD_BYTES + len(HEAD_END))
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise WebSocketError("request head too large", status=431)
        return -1
    return end + len(HEAD_END)


def parse_head(raw: bytes) -> RequestHead:
    """The head (through its blank line, as `head_length` measured it); WebSocketError(400) when malformed."""
    text = raw.decode("latin-1")
    lines = text[:-len(HEAD_END)].split("\r\n") if text.endswith("\r\n\r\n") else text.rstrip("\r\n").split("\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise WebSocketError("malformed request line", status=400)
    if len(lines) - 1 > MAX_HEADERS:
        raise WebSocketError(f"more than {MAX_HEADERS} header fields", status=431)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # A folded line (leading white space), a name that is not a token or a control character in the value:
        # refused, never guessed at (aiohttp refuses them too), so a proxy in front and this node cannot read the
        # same head two ways.
        if not colon or not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            raise WebSocketError("malformed header field", status=400)
        headers.append((name.lower(), value.strip(" \t")))
    return RequestHead(match[1], match[2], (int(match[3]), int(match[4])), tuple(headers))


def wants_websocket(head: RequestHead) -> bool:
    """Whether the client asks for a WebSocket upgrade at all (what the listener sniffs on)."""
    return "websocket" in head.tokens("upgrade")


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What a valid upgrade request carries that the session needs."""

    key: str
    protocols: tuple[str, ...]


def check_upgrade(head: RequestHead) -> Upgrade:
    """The RFC 6455 checks of section 4.2.1, or the WebSocketError (with its status) answering the first failure."""
    if head.method != "GET":
        raise WebSocketError(f"method {head.method} not allowed; a WebSocket upgrade is a GET", status=405)
    if head.version < (1, 1):
        raise WebSocketError("a WebSocket upgrade needs HTTP/1.1", status=400)
    if "websocket" not in head.tokens("upgrade") or "upgrade" not in head.tokens("connection"):
        raise WebSocketError("expected a WebSocket upgrade", status=400)
    version = head.header("sec-websocket-version")
    if version != SUPPORTED_VERSION:
        raise WebSocketError(f"unsupported Sec-WebSocket-Version {version!r} (13 expected)", status=426)
    key = head.header("sec-websocket-key") or ""
    try:
        if len(base64.b64decode(key.encode("ascii"), validate=True)) != 16:
            raise ValueError(key)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise WebSocketError("Sec-WebSocket-Key is not 16 bytes in base64", status=400) from None
    protocols = tuple(sorted(head.tokens("sec-websocket-protocol")))
    return Upgrade(key, protocols)


def token_of(head: RequestHead, query: dict[str, str]) -> str | None:
    """The client's token, from the places the aiohttp endpoint reads it (header first, then query)."""
    return extract_token(head.header("authorization"), query.get("token"))


def response_101(key: str, protocol: str | None = None) -> bytes:
    """The 101 answer to an upgrade with Sec-WebSocket-Key `key`; `protocol` is echoed only when chosen."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(key)}"]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refusal(status: int, reason: str) -> bytes:
    """A refused upgrade: the JSON body the aiohttp endpoint answers with, then the connection closes."""
    body = json.dumps({"status": status, "error": reason}).encode()
    extra = ""
    if status == 405:
        extra = "Allow: GET\r\n"
    elif status == 426:
        extra = f"Sec-WebSocket-Version: {SUPPORTED_VERSION}\r\n"
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode("latin-1") + body
