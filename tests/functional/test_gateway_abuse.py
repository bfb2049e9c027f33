"""A real gateway process under abuse: slow, oversized, invalid and escaping requests, floods, silent instances.

Each test also checks that the gateway's resident memory returns to near its baseline once the abusive clients are
gone: a first, smaller round warms caches and allocator pools, the baseline is read after it, and after the real
round the RSS is polled until it settles within a tolerance (or a deadline passes).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from posixpath import normpath
from urllib.parse import unquote

import pytest

from harness import ProcessGroup
from tests.gateway.procs import eventually, start_gateway_proc, start_upstream_proc

PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_TOLERANCE_BYTES = 6 * 1024 * 1024
HEAD_TIMEOUT_S = 0.5
RESPONSE_TIMEOUT_S = 0.5


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (/proc/<pid>/statm)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


async def rss_settles(pid: int, baseline: int, *, timeout_s: float = 10.0) -> int:
    """Poll the RSS until it is within the tolerance of `baseline` or `timeout_s` passes; returns the last value."""
    deadline = time.monotonic() + timeout_s
    current = rss_bytes(pid)
    while current > baseline + RSS_TOLERANCE_BYTES and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        current = rss_bytes(pid)
    return current


async def memory_returns(pid: int, abuse: Callable[[int], Awaitable[None]], *, warmup: int, load: int) -> None:
    """Run `abuse(warmup)`, take the baseline, run `abuse(load)`, then assert the RSS comes back near it."""
    await abuse(warmup)
    baseline = rss_bytes(pid)
    await abuse(load)
    after = await rss_settles(pid, baseline)
    assert after <= baseline + RSS_TOLERANCE_BYTES, (
        f"RSS {after / 2**20:.1f} MiB did not return to {baseline / 2**20:.1f} MiB (+{RSS_TOLERANCE_BYTES >> 20})")


class SilentInstance:
    """An instance that accepts connections and reads requests but never answers; counts open connections."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def silent() -> AsyncIterator[SilentInstance]:
    """A silent instance on a free port."""
    instance = SilentInstance()
    await instance.start()
    yield instance
    await instance.close()


def write_config(tmp_path: Path, upstream: int, silent: int, *, max_connections: int = 1000,
                 defer_accept_s: float = 1.0) -> Path:
    config = tmp_path / "routes.yaml"
    config.write_text(f"""\
wsgate:
  defer-accept: {defer_accept_s}
  head-timeout: {int(HEAD_TIMEOUT_S * 1000)}ms
  max-head-bytes: 4096
  max-connections: {max_connections}
  response-timeout: {int(RESPONSE_TIMEOUT_S * 1000)}ms
  access-log: false
routes:
  - id: base
    uri: http://127.0.0.1:{upstream}
    predicates:
      - Path=/svc/**
    filters:
      - RewritePath=/svc/(?<rest>.*), /base/$\\{{rest}}
  - id: segment
    uri: http://127.0.0.1:{upstream}
    predicates:
      - Path=/seg/{{segment}}/**
    filters:
      - SetRequestHeader=X-Segment, {{segment}}
  - id: silent
    uri: http://127.0.0.1:{silent}
    predicates:
      - Path=/silent/**
  - id: silent-ws
    uri: ws://127.0.0.1:{silent}
    predicates:
      - Path=/silent-ws/**
""")
    return config


async def exchange(port: int, data: bytes, *, timeout_s: float = 10.0) -> bytes:
    """Send `data` on a fresh connection and read until the gateway closes it (or one response has come)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(read_response(reader), timeout_s)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response (head and Content-Length body), or what came before EOF."""
    head = b""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as partial:
        return partial.partial
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict[str, object]:
    return json.loads(response.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


async def start(procs: ProcessGroup, tmp_path: Path, silent: SilentInstance, *,
                max_connections: int = 1000, defer_accept_s: float = 1.0) -> tuple[int, int]:
    """An upstream process and a one-worker gateway; returns (gateway pid, gateway port)."""
    upstream = start_upstream_proc(procs, "upstream")
    assert silent.server is not None
    silent_port = int(silent.server.sockets[0].getsockname()[1])
    config = write_config(tmp_path, upstream, silent_port, max_connections=max_connections,
                          defer_accept_s=defer_accept_s)
    proc, port = start_gateway_proc(procs, config, workers=1)
    return proc.pid, port


async def test_gateway_abuse_slowloris_heads_get_408_and_memory_returns(
        procs: ProcessGroup, tmp_path: Path, silent: SilentInstance) -> None:
    pid, port = await start(procs, tmp_path, silent)

    async def slowloris(prefix: bytes) -> tuple[int, float]:
        """The status answered (0: the connection was reset instead) and the seconds it took.

        The gateway answers 408, shuts its side down and drops what still trickles in (a lingering close), so
        the answer is never overtaken by a reset: every slow client must read its 408.
        """
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(prefix + b"GET /svc/x HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            # A header line every 50 ms: the head never completes, but bytes keep coming.
            for i in range(200):
                await asyncio.sleep(0.05)
                if writer.is_closing():
                    return
                writer.write(b"X-%d: y\r\n" % i)

        dripping = asyncio.ensure_future(trickle())
        try:
            try:
                response = await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError:
                return 0, time.monotonic() - started
            if prefix:  # the first, complete request's answer comes first
                response = response[response.index(b"HTTP/1.1 ", 1):]
            return status_of(response), time.monotonic() - started
        finally:
            dripping.cancel()
            writer.close()

    async def round_(n: int) -> None:
        results = await asyncio.gather(*(slowloris(b"") for _ in range(n)))
        statuses = [status for status, _ in results]
        assert set(statuses) == {408}
        # Cut off at the head timeout (counted from before the connect), however many bytes keep coming.
        times = sorted(elapsed for _, elapsed in results)
        assert all(HEAD_TIMEOUT_S <= elapsed < HEAD_TIMEOUT_S + 8 for elapsed in times), (times[:3], times[-3:])

    await memory_returns(pid, round_, warmup=20, load=200)
    # The second head of a kept-alive connection has the same deadline.
    statuses = {(await slowloris(b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n\r\n"))[0] for _ in range(3)}
    assert statuses == {408}


async def test_gateway_abuse_oversized_heads_get_431_and_memory_returns(
        procs: ProcessGroup, tmp_path: Path, silent: SilentInstance) -> None:
    pid, port = await start(procs, tmp_path, silent)
    shapes = [
        b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n",
        b"GET /svc/x HTTP/1.1\r\nHost: x\r\n" + b"X-Many: b\r\n" * 1000 + b"\r\n",
        b"GET /" + b"p" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /svc/x HTTP/1.1\r\nX-Unfinished: " + b"c" * 70000,
    ]

    async def round_(n: int) -> None:
        responses = await asyncio.gather(*(exchange(port, shapes[i % len(shapes)]) for i in range(n)))
        assert {status_of(r) for r in responses} == {431}

    await memory_returns(pid, round_, warmup=20, load=200)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"HELLO\r\n\r\n",
        b"GET /svc/x HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /svc/x HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /svc/x HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /svc/x HTTP/1.1\r\nHost: x\r\n folded: continuation\r\n\r\n",
        b"GET /svc/x HTTP/1.1\r\nX-Nul: a\x00b\r\n\r\n",
        b"GET /svc/x HTTP/1.1\r\nX-Bare-LF: a\nInjected: b\r\n\r\n",
        b"POST /svc/x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /svc/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /svc/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /svc/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /svc/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["garbage", "version", "request-line", "absolute-form", "header-name", "obs-fold", "nul", "bare-lf",
         "cl-and-te", "two-lengths", "negative-length", "unknown-te", "bad-chunk"],
)
async def test_gateway_abuse_invalid_http_gets_400(procs: ProcessGroup, tmp_path: Path, silent: SilentInstance,
                                                   request_bytes: bytes) -> None:
    _pid, port = await start(procs, tmp_path, silent)
    response = await exchange(port, request_bytes)
    assert status_of(response) == 400
    assert silent.accepted == 0
    # The gateway keeps serving after refusing it.
    assert status_of(await exchange(port, b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


ESCAPES = [
    "/svc/../admin",
    "/svc/a/../../admin",
    "/svc/%2e%2e/admin",
    "/svc/%2E%2E/%2e%2e/admin",
    "/svc/.%2e/admin",
    "/svc/..%2Fadmin",
    "/svc/..%2fadmin",
    "/svc/a%2F..%2F..%2Fadmin",
    "/svc/..%5Cadmin",
    "/svc/..;x=1/admin",
    "/svc/%252e%252e/admin",
    "/svc/a%0d%0aX-Evil:%201",
    "/svc/a%00b",
]


@pytest.mark.parametrize("path", ESCAPES)
async def test_gateway_abuse_rewrite_cannot_escape_its_base(procs: ProcessGroup, tmp_path: Path,
                                                             silent: SilentInstance, path: str) -> None:
    _pid, port = await start(procs, tmp_path, silent)
    response = await exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    if status_of(response) == 400:
        return
    assert status_of(response) == 200
    seen = json_body(response)
    forwarded = str(seen["path"])
    # However the instance decodes and normalises it, the path stays under /base/ and carries no CR/LF.
    for decoded in (forwarded, unquote(forwarded), unquote(unquote(forwarded))):
        normal = normpath(decoded.replace("\\", "/"))
        assert normal.startswith("/base/") or normal == "/base", (path, forwarded)
        assert "\r" not in decoded and "\n" not in decoded
    assert not any(k.lower() == "x-evil" for k, _ in seen["headers"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("segment", ["a%0d%0aX-Evil:%201", "a%0aX-Evil:1", "a%0dX-Evil:1", "a%00b"])
async def test_gateway_abuse_crlf_in_template_header_gets_400(procs: ProcessGroup, tmp_path: Path,
                                                               silent: SilentInstance, segment: str) -> None:
    _pid, port = await start(procs, tmp_path, silent)
    good = await exchange(port, b"GET /seg/plain/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(good) == 200
    assert ["X-Segment", "plain"] in json_body(good)["headers"]  # type: ignore[operator]
    response = await exchange(port, f"GET /seg/{segment}/x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(response) == 400


@pytest.mark.parametrize(("defer_accept_s", "held_sends"), [(0.0, b""), (1.0, b"GET ")],
                         ids=["silent-without-defer-accept", "partial-head-with-defer-accept"])
async def test_gateway_abuse_connection_flood_gets_503_and_memory_returns(
        procs: ProcessGroup, tmp_path: Path, silent: SilentInstance, defer_accept_s: float,
        held_sends: bytes) -> None:
    """A flood of connections that never finish a head. With `defer-accept` (the default) the kernel keeps silent
    ones from the gateway for its period, so the flood that holds the gateway's slots sends a first byte."""
    limit = 50
    pid, port = await start(procs, tmp_path, silent, max_connections=limit, defer_accept_s=defer_accept_s)

    async def hold() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(held_sends)
        await writer.drain()
        return reader, writer

    async def round_(n: int) -> None:
        held = [await hold() for _ in range(limit)]
        try:
            # Accepted in order: once these are held, every further connection is over the limit.
            responses = await asyncio.gather(*(exchange(port, b"GET /svc/x HTTP/1.1\r\nHost: x\r\n\r\n")
                                               for _ in range(n)))
            assert {status_of(r) for r in responses} == {503}
        finally:
            for _, writer in held:
                writer.close()
        deadline = time.monotonic() + 5
        status = 503
        while status == 503 and time.monotonic() < deadline:
            status = status_of(await exchange(port, b"GET /actuator/health HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 200

    await memory_returns(pid, round_, warmup=50, load=400)


@pytest.mark.parametrize("upgrade", [False, True], ids=["http", "websocket"])
async def test_gateway_abuse_silent_instance_gets_504_and_memory_returns(
        procs: ProcessGroup, tmp_path: Path, silent: SilentInstance, upgrade: bool) -> None:
    pid, port = await start(procs, tmp_path, silent)
    if upgrade:
        request = (b"GET /silent-ws/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    else:
        request = b"GET /silent/x HTTP/1.1\r\nHost: x\r\n\r\n"

    async def one() -> tuple[int, float]:
        started = time.monotonic()
        response = await exchange(port, request)
        return status_of(response), time.monotonic() - started

    async def round_(n: int) -> None:
        results = await asyncio.gather(*(one() for _ in range(n)))
        assert {status for status, _ in results} == {504}
        assert all(RESPONSE_TIMEOUT_S * 0.9 <= elapsed < RESPONSE_TIMEOUT_S + 4 for _, elapsed in results)
        # The gateway let go of its side of every upstream connection.
        assert await eventually(lambda: silent.open == 0), f"{silent.open} upstream connections left open"

    await memory_returns(pid, round_, warmup=20, load=200)
