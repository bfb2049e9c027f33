"""Differential framing: each variant goes through a real gateway (the server object on real sockets) to an upstream
that records the bytes it receives, and h11 is the judge.

For every variant, one of two things holds:
- the upstream received exactly the requests that h11 frames from the client's bytes (method, target, end-to-end
  headers, body, trailers; in order), each answered, and nothing else (no error, no unfinished message); or
- the client got 400 for some request, every request before it reached the upstream as h11 frames it, and nothing
  of the refused one (nor anything after it) did.
A variant that h11 refuses, or leaves unfinished, must be refused. Issue 13, items 1, 4 and 6.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.model import RouteMetadata
from tests.gateway.conftest import StartGateway, config, route
from tests.gateway.framing import RecordingUpstream, frame_requests, read_answers

HOST = (b"Host", b"gw")
WS = (HOST, (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Version", b"13"),
      (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="))
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw\r\nX-Swallow: "


def req(method: bytes = b"GET", target: bytes = b"/", headers: tuple[tuple[bytes, bytes], ...] = (HOST,),
        body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    """A request with CRLF line ends, headers as given, and `body` appended as is."""
    lines = [method + b" " + target + b" " + version, *(name + b": " + value for name, value in headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def cl(body: bytes, *extra: tuple[bytes, bytes], method: bytes = b"POST", target: bytes = b"/cl") -> bytes:
    return req(method, target, (HOST, (b"Content-Length", str(len(body)).encode()), *extra), body)


def chunked(body: bytes, *extra: tuple[bytes, bytes], target: bytes = b"/te") -> bytes:
    return req(b"POST", target, (HOST, (b"Transfer-Encoding", b"chunked"), *extra), body)


GOOD_CHUNKS = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

VARIANTS: dict[str, bytes] = {
    # -- plain, for the record --------------------------------------------------------------------------------------
    "get": req(),
    "get-query": req(target=b"/q?a=1&b=2"),
    "post-length": cl(b"hello"),
    "post-length-zero": cl(b""),
    "post-length-leading-zeros": req(b"POST", b"/", (HOST, (b"Content-Length", b"005")), b"hello"),
    "http-1.0-no-host": req(version=b"HTTP/1.0", headers=()),
    "lowercase-method": req(method=b"get"),
    # -- Content-Length and Transfer-Encoding together -------------------------------------------------------------
    "cl-then-te": req(b"POST", b"/", (HOST, (b"Content-Length", b"6"), (b"Transfer-Encoding", b"chunked")),
                      b"0\r\n\r\nX"),
    "te-then-cl": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"4")),
                      b"0\r\n\r\n"),
    "cl-te-smuggle": req(b"POST", b"/", (HOST, (b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")),
                         b"0\r\n\r\n" + SMUGGLED),
    "te-chunked-twice": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"chunked"),
                                            (b"Transfer-Encoding", b"chunked")), GOOD_CHUNKS),
    "te-list": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"gzip, chunked")), GOOD_CHUNKS),
    "te-chunked-then-identity": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"chunked, identity")), b"5\r\n"),
    "te-identity": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"identity")), b"hello"),
    "te-uppercase": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"CHUNKED")), GOOD_CHUNKS),
    "te-leading-comma": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b", chunked")), GOOD_CHUNKS),
    "te-vertical-tab": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"\x0bchunked")), GOOD_CHUNKS),
    "te-in-http-1.0": req(b"POST", b"/", ((b"Transfer-Encoding", b"chunked"),), GOOD_CHUNKS, b"HTTP/1.0"),
    # -- Content-Length values -------------------------------------------------------------------------------------
    "cl-duplicate-same": req(b"POST", b"/", (HOST, (b"Content-Length", b"5"), (b"Content-Length", b"5")), b"hello"),
    "cl-duplicate-different": req(b"POST", b"/", (HOST, (b"Content-Length", b"5"), (b"Content-Length", b"6")),
                                  b"hello!"),
    "cl-comma-same": req(b"POST", b"/", (HOST, (b"Content-Length", b"5, 5")), b"hello"),
    "cl-comma-different": req(b"POST", b"/", (HOST, (b"Content-Length", b"5, 11")), b"hello world"),
    "cl-plus": req(b"POST", b"/", (HOST, (b"Content-Length", b"+5")), b"hello"),
    "cl-negative": req(b"POST", b"/", (HOST, (b"Content-Length", b"-1")), b"hello"),
    "cl-hex": req(b"POST", b"/", (HOST, (b"Content-Length", b"0x5")), b"hello"),
    "cl-superscript-two": req(b"POST", b"/", (HOST, (b"Content-Length", b"\xb2")), b"he"),  # was a 500
    "cl-utf8-arabic-three": req(b"POST", b"/", (HOST, (b"Content-Length", "\u0663".encode())), b"hel"),
    "cl-fullwidth-five": req(b"POST", b"/", (HOST, (b"Content-Length", "\uff15".encode())), b"hello"),
    "cl-inner-space": req(b"POST", b"/", (HOST, (b"Content-Length", b"1 0")), b"helloworld"),
    "cl-empty": req(b"POST", b"/", (HOST, (b"Content-Length", b"")), b""),
    "cl-huge": req(b"POST", b"/", (HOST, (b"Content-Length", b"9" * 25)), b"hello"),
    # -- chunked bodies -------------------------------------------------------------------------------------------
    "chunked": chunked(GOOD_CHUNKS),
    "chunked-extension": chunked(b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    "chunked-extension-quoted": chunked(b'5;n="a b";m\r\nhello\r\n0;last\r\n\r\n'),
    "chunked-extension-bare-cr": chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
    "chunked-extension-bare-lf": chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
    "chunked-extension-space-before-semicolon": chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"),
    "chunked-leading-zeros": chunked(b"0005\r\nhello\r\n000\r\n\r\n"),
    "chunked-size-17-digits": chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-overflow-64-bit": chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-2-to-the-64-minus-1": chunked(b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-hex-prefix": chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-negative": chunked(b"-5\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-arabic-digit": chunked("\u0665".encode() + b"\r\nhello\r\n0\r\n\r\n"),
    "chunked-size-trailing-space": chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
    "chunked-bare-lf-after-size": chunked(b"5\nhello\r\n0\r\n\r\n"),
    "chunked-bare-lf-after-data": chunked(b"5\r\nhello\n0\r\n\r\n"),
    "chunked-bare-cr-after-data": chunked(b"5\r\nhello\r0\r\n\r\n"),
    "chunked-no-crlf-after-data": chunked(b"5\r\nhelloXX0\r\n\r\n"),
    "chunked-data-longer-than-size": chunked(b"3\r\nhello\r\n0\r\n\r\n"),
    "chunked-last-chunk-bare-lf": chunked(b"5\r\nhello\r\n0\r\n\n") + req(target=b"/after"),  # issue 13, item 4
    "chunked-smuggle-in-data": chunked(b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED + b"x\r\n\r\n"),
    # -- trailers -------------------------------------------------------------------------------------------------
    "trailers": chunked(b"5\r\nhello\r\n0\r\nX-Sum: 5\r\nX-Other: a b\r\n\r\n"),
    "trailer-obs-fold": chunked(b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n folded\r\n\r\n"),
    "trailer-space-before-colon": chunked(b"5\r\nhello\r\n0\r\nX-Sum : 5\r\n\r\n"),
    "trailer-bare-cr": chunked(b"5\r\nhello\r\n0\r\nX-Sum: 5\rX: 1\r\n\r\n"),
    "trailer-content-length": chunked(b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"),
    # -- heads: obs-fold, bare LF, bare CR, whitespace before the colon --------------------------------------------
    "obs-fold": req(headers=(HOST, (b"X-A", b"a\r\n b"))),
    "obs-fold-content-length": req(b"POST", b"/", (HOST, (b"Content-Length", b"\r\n 5")), b"hello"),
    "obs-fold-transfer-encoding": req(b"POST", b"/", (HOST, (b"Transfer-Encoding", b"\r\n chunked")), GOOD_CHUNKS),
    "bare-lf-head": b"GET / HTTP/1.1\nHost: gw\n\n",
    "bare-lf-one-line": b"GET / HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n",
    "bare-lf-before-length": b"POST / HTTP/1.1\r\nHost: gw\r\nX-A: b\nContent-Length: 5\r\n\r\nhello",
    "bare-cr-head": b"GET / HTTP/1.1\rHost: gw\r\n\r\n",
    "bare-cr-value": b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: a\rContent-Length: 5\r\n\r\nhello",
    "bare-cr-only-head": b"GET / HTTP/1.1\rHost: gw\r\r",
    "space-before-colon-length": req(b"POST", b"/", (HOST, (b"Content-Length ", b"5")), b"hello"),
    "tab-before-colon-te": req(b"POST", b"/", (HOST, (b"Transfer-Encoding\t", b"chunked")), GOOD_CHUNKS),
    "space-in-name": req(headers=(HOST, (b"X A", b"b"))),
    "nul-in-value": req(headers=(HOST, (b"X-A", b"a\x00b"))),
    "no-host": req(headers=()),
    "two-hosts": req(headers=(HOST, (b"Host", b"other"))),
    "leading-lf": b"\n" + req(),
    "absolute-form": req(target=b"http://gw/"),
    "double-space-request-line": b"GET  / HTTP/1.1\r\nHost: gw\r\n\r\n",
    # -- HTTP/1.0 keep-alive, pipelining, Expect --------------------------------------------------------------------
    "http-1.0-keep-alive-pipelined": (req(headers=(HOST, (b"Connection", b"keep-alive")), version=b"HTTP/1.0")
                                      + req(target=b"/2", headers=(HOST, (b"Connection", b"keep-alive")),
                                            version=b"HTTP/1.0")
                                      + req(target=b"/3", version=b"HTTP/1.0") + req(target=b"/never")),
    "http-1.0-length-then-more": (req(b"POST", b"/", ((b"Content-Length", b"5"), (b"Connection", b"keep-alive")),
                                      b"hello", b"HTTP/1.0") + req(target=b"/next")),
    "pipelined-gets": req(target=b"/1") + req(target=b"/2") + req(target=b"/3"),
    "pipelined-mixed": cl(b"hello") + chunked(GOOD_CHUNKS) + req(target=b"/last"),
    "pipelined-then-malformed": req(target=b"/ok") + b"GET /bad HTTP/1.1\r\nHost: gw\r\nX: a\nY: b\r\n\r\n",
    "pipelined-then-smuggle-shape": req(target=b"/ok") + req(b"POST", b"/", (
        HOST, (b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")), b"0\r\n\r\n"),
    "pipelined-after-close": req(headers=(HOST, (b"Connection", b"close"))) + req(target=b"/never"),
    "expect-100-continue-length": cl(b"hello", (b"Expect", b"100-continue")),
    "expect-100-continue-chunked": chunked(GOOD_CHUNKS, (b"Expect", b"100-continue")),
    "expect-100-continue-pipelined": cl(b"hello", (b"Expect", b"100-continue")) + req(target=b"/2"),
    # -- upgrades ---------------------------------------------------------------------------------------------------
    "upgrade-websocket": req(target=b"/ws", headers=WS),
    "upgrade-websocket-with-length-body": req(target=b"/ws", headers=(*WS, (b"Content-Length", b"5")),
                                              body=b"hello"),
    "upgrade-websocket-with-chunked-body": req(target=b"/ws", headers=(*WS, (b"Transfer-Encoding", b"chunked")),
                                               body=GOOD_CHUNKS),
    "upgrade-h2c-with-body": req(b"POST", b"/h2c", (HOST, (b"Connection", b"Upgrade, HTTP2-Settings"),
                                                     (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__"),
                                                     (b"Content-Length", b"5")), b"hello"),
}

# `Connection` nominating each header, on a request whose body is a second request (issue 13's attack: the proxy
# dropped Content-Length as hop-by-hop yet relayed the body, which the instance read as the next request).
NOMINATED = ("content-length", "Content-Length", "transfer-encoding", "host", "upgrade", "sec-websocket-key",
             "sec-websocket-version", "sec-websocket-protocol", "sec-websocket-extensions", "keep-alive", "te",
             "trailer", "expect", "authorization", "cookie", "x-forwarded-for", "x-custom", "connection", "close")
for _name in NOMINATED:
    _body = SMUGGLED + b"x\r\n\r\n"
    VARIANTS[f"connection-names-{_name}"] = req(b"POST", b"/nominated", (
        HOST, (b"Connection", b"keep-alive, " + _name.encode()), (b"Content-Length", str(len(_body)).encode()),
        (b"X-Custom", b"1"), (b"Authorization", b"Bearer k"), (b"Cookie", b"a=b")), _body) + req(target=b"/next")
VARIANTS["connection-names-content-length-chunked"] = chunked(
    b"5\r\nhello\r\n0\r\n\r\n", (b"Connection", b"transfer-encoding"))
VARIANTS["connection-names-content-length-in-second-header"] = req(b"POST", b"/", (
    HOST, (b"Connection", b"keep-alive"), (b"Connection", b"content-length"), (b"Content-Length", b"5")), b"hello")


def test_the_suite_has_at_least_60_variants() -> None:
    assert len(VARIANTS) >= 60


@pytest.mark.parametrize("name", sorted(VARIANTS))
async def test_gateway_frames_requests_as_h11_does_or_refuses(name: str, start_gateway: StartGateway) -> None:
    data = VARIANTS[name]
    expected = frame_requests(data)
    upstream = RecordingUpstream()
    port = await upstream.start()
    gw = await start_gateway(config(route("all", f"http://127.0.0.1:{port}", ["Path=/**"],
                                          metadata=RouteMetadata(response_timeout_s=5.0)),
                                    native_relay=False, head_timeout_s=5.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(data)
    # All of h11's requests answered; or, when h11 refuses or wants more, the gateway's refusal and its close.
    answers = await read_answers(reader, count=len(expected.messages) if expected.complete else None)
    writer.close()
    await gw.server.drain(5.0)
    await upstream.settled()
    await upstream.close()

    statuses = [answer.status for answer in answers]
    refused = bool(statuses) and statuses[-1] == 400
    passed = statuses[:-1] if refused else statuses
    assert set(passed) <= {200}, f"unexpected answers {statuses}"
    assert not upstream.errors, f"the upstream could not parse what it got: {upstream.errors}"
    assert upstream.unfinished == 0, "the upstream was left inside a message"
    if refused:
        assert upstream.messages == expected.messages[:len(passed)], "something of the refused request went through"
    else:
        assert expected.complete, f"h11 says {expected.error or 'unfinished'}; the gateway answered {statuses}"
        assert upstream.messages == expected.messages
        assert len(passed) == len(expected.messages)
