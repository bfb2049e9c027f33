"""The native lane's shapes (gateway/proxy/lane_shapes.py) over real sockets.

A request a shape decides must reach the instance byte for byte as the Python path sends it. Requests no shape may
decide (another route may match, the path is not plain, the gateway's own endpoints) must get the whole decision.
Each test starts a gateway per lane and sends both the same requests. The Python lane is the reference.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from gateway.config.model import GatewayConfig
from gateway.proxy.native_http import NativeHttp
from tests.gateway.conftest import RunningGateway, StartGateway, StartUpstream, config, route
from tests.gateway.framing import read_answers


@pytest.fixture
def http_lane() -> None:
    """No lane for the whole test: each test starts one gateway per lane itself."""
    return None


class RecordingUpstream:
    """An instance that records each request head it gets and answers 200 `ok`, keeping connections alive."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def recording_upstream() -> AsyncIterator[tuple[RecordingUpstream, int]]:
    upstream = RecordingUpstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    yield upstream, int(server.sockets[0].getsockname()[1])
    server.close()


def lane_of(gw: RunningGateway) -> NativeHttp:
    assert gw.server.native_http is not None, "the native lane did not start"
    return gw.server.native_http


async def get(gw: RunningGateway, target: str, *, headers: str = "Host: gw\r\n") -> int:
    """One request on a connection of its own (a refusal closes the connection): its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\n{headers}\r\n".encode("latin-1"))
        answers = await read_answers(reader, count=1)
        assert answers, f"no answer to {target}"
        return answers[0].status
    finally:
        writer.close()


async def both_lanes(start_gateway: StartGateway, cfg: GatewayConfig, upstream: RecordingUpstream,
                     targets: list[str]) -> tuple[NativeHttp, list[int]]:
    """Send `targets` in order through a Python-lane gateway, then a native one: the statuses and the heads the
    instance got must be the same. The native lane, and the statuses."""
    seen: dict[bool, tuple[list[int], list[bytes]]] = {}
    native: NativeHttp | None = None
    for lane_on in (False, True):
        gw = await start_gateway(replace(cfg, server=replace(cfg.server, native_http=lane_on)))
        del upstream.heads[:]
        statuses = [await get(gw, target) for target in targets]
        seen[lane_on] = (statuses, list(upstream.heads))
        if lane_on:
            native = lane_of(gw)
    assert seen[True][0] == seen[False][0]
    assert seen[True][1] == seen[False][1]
    assert native is not None
    return native, seen[True][0]


# The order matters: a shape is made from the first plain request under a prefix, then serves the next ones.
EDGE_TARGETS = [
    "/api/item/1", "/api/item/2",              # `/api` cannot have a shape: /api/special/** comes before it
    "/api/special/1",                          # ... so this one must still reach `special`
    "/api/special/2",                          # the first route: a shape of its own
    "/v2/a", "/v2/b/c", "/v2/b/",              # shaped, the trailing slash kept
    "/other/x?q=1", "/other/y?q=1",            # the same query: shaped
    "/other/z?q=2",                            # another query: the whole decision
    "/other/*", "/other/plain",                # no query: '*' (a sub-delimiter) makes a shape, the next is shaped
    # Not plain: the whole decision, though a shape for the same head exists.
    "/other/a%20b", "/other/a;m=1", "/other/a/../b", "/other/a//b", "/other/..", "/other/...", "/other/a..b",
    "/other/a/./b", "/other", "/other/",
    "/actuator/health",
]


async def test_shaped_requests_reach_the_instance_as_the_python_path_sends_them(
        recording_upstream: tuple[RecordingUpstream, int], start_gateway: StartGateway) -> None:
    upstream, port = recording_upstream
    uri = f"http://127.0.0.1:{port}"
    cfg = config(route("special", uri, ["Path=/api/special/**"]),
                 route("api", uri, ["Path=/api/**,/v2/**"], ["StripPrefix=1", "AddRequestHeader=X-Shape, yes"]),
                 route("other", uri, ["Path=/other/**", "Method=GET"], ["PrefixPath=/base"]),
                 route("root", uri, ["Path=/**"]))
    native, statuses = await both_lanes(start_gateway, cfg, upstream, EDGE_TARGETS)
    assert statuses.count(200) >= len(EDGE_TARGETS) - 3, statuses
    # api/special/2, v2/b/c and v2/b/, other/y?q=1 and other/plain; no path that is not plain
    assert native.shaped == 5, native.shaped


async def test_a_shape_of_the_root_route_leaves_the_gateways_own_endpoints_alone(
        recording_upstream: tuple[RecordingUpstream, int], start_gateway: StartGateway) -> None:
    upstream, port = recording_upstream
    cfg = config(route("root", f"http://127.0.0.1:{port}", ["Path=/**"]))
    native, statuses = await both_lanes(start_gateway, cfg, upstream, ["/x", "/y", "/actuator/health", "/actuator"])
    assert native.shaped == 1
    assert statuses[2] == 200 and not any(b"/actuator" in head for head in upstream.heads)


async def test_a_shaped_decision_handed_back_is_answered_by_the_python_path(
        start_upstream: StartUpstream, start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/svc/**"], ["StripPrefix=1"]),
                                    native_http=True))
    assert await get(gw, "/svc/a") == 200
    # A chunked answer goes back to Python with both connections; the shaped decision gives its head and plan.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"GET /svc/stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15.0)
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
        assert b"AAAAAAAAAA" in await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 15.0)
    finally:
        writer.close()
    lane = lane_of(gw)
    stats = lane.lane.stats()
    assert lane.shaped == 1 and stats["handed_back"] == 1, (lane.shaped, stats)


async def test_the_access_log_names_the_path_of_a_shaped_request(
        recording_upstream: tuple[RecordingUpstream, int], start_gateway: StartGateway,
        caplog: pytest.LogCaptureFixture) -> None:
    _, port = recording_upstream
    gw = await start_gateway(config(route("svc", f"http://127.0.0.1:{port}", ["Path=/svc/**"]), native_http=True,
                                    access_log=True))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        assert [await get(gw, f"/svc/{n}") for n in range(3)] == [200] * 3
    assert lane_of(gw).shaped == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    for n in range(3):
        assert any(f'"GET /svc/{n} HTTP/1.1" 200 route=svc' in line for line in lines), lines
