"""Upgrades the native HTTP lane places itself (gateway/_http_upgrade.c), over real loopback sockets.

The first upgrade of a routing decision goes through Python (`LaneUpgrades.start`), which dials it and leaves a plan
in the decision; later upgrades of that decision are dialed by the lane's C from the plan, with no Python call until
their dial ends. These tests check that such upgrades are placed, counted, logged, refused, timed out and drained as
Python's own are, and that a plan stops being used once the instances it was built for change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from gateway.discovery.base import Endpoint
from gateway.discovery.static import StaticProvider
from gateway.model import RouteMetadata
from gateway.proxy.native_http import NativeHttp
from tests.gateway.conftest import RunningGateway, StartGateway, StartUpstream, config, route
from tests.gateway.rawsock import silent_listener


@pytest.fixture(autouse=True)
def http_lane() -> str:
    """Only the native lane places upgrades itself (overrides the package's both-lanes fixture)."""
    return "native"


def lane_of(gw: RunningGateway) -> NativeHttp:
    lane = gw.server.native_http
    assert lane is not None
    return lane


def dialed_by_the_lane(gw: RunningGateway) -> int:
    return int(lane_of(gw).lane.stats()["upgrades_dialed"])


HEAD = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def upgrade(gw: RunningGateway, head: bytes = HEAD) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the same upgrade head each time (one cached decision) and read the answer's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(head)
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5), reader, writer


def upstream_name(head: bytes) -> bytes:
    return next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-upstream:"))


async def upgraded_name(gw: RunningGateway) -> bytes:
    head, _, writer = await upgrade(gw)
    try:
        assert head.startswith(b"HTTP/1.1 101 "), head
        return upstream_name(head)
    finally:
        writer.close()


async def all_closed(gw: RunningGateway) -> None:
    await asyncio.wait_for(asyncio.gather(*(t.done for t in list(gw.server.tunnels))), 5)


async def test_lane_dials_the_upgrades_after_the_first_in_round_robin(start_upstream: StartUpstream,
                                                                     start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one), Endpoint("127.0.0.1", two))})
    gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"])), provider=provider)
    names = [await upgraded_name(gw) for _ in range(6)]
    assert names == [b"one", b"two"] * 3  # the lane moves the balancer's own counter: strict turns
    assert dialed_by_the_lane(gw) == 5  # the first built the plan
    # Their 101s reach Python quietly (no wake-up of its own): a read of the registry takes them.
    assert len(gw.server.tunnels) <= 6
    assert lane_of(gw).upgrades.upgraded == 6
    for port in (one, two):
        assert gw.metrics.value("wsgate_upgrades_total", route="ws", instance=f"127.0.0.1:{port}") == 3
    await all_closed(gw)
    assert gw.balancer.active(Endpoint("127.0.0.1", one)) == gw.balancer.active(Endpoint("127.0.0.1", two)) == 0
    assert lane_of(gw).count() == 0


async def test_lane_dial_stops_using_a_plan_once_the_instances_change(start_upstream: StartUpstream,
                                                                      start_gateway: StartGateway) -> None:
    one, two = await start_upstream("one"), await start_upstream("two")
    provider = StaticProvider({"svc": (Endpoint("127.0.0.1", one),)})
    gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"])), provider=provider)
    assert [await upgraded_name(gw) for _ in range(2)] == [b"one", b"one"]
    assert dialed_by_the_lane(gw) == 1
    provider.set("svc", (Endpoint("127.0.0.1", two),))
    assert [await upgraded_name(gw) for _ in range(2)] == [b"two", b"two"]
    assert dialed_by_the_lane(gw) == 2  # the first after the change went through Python, which planned again


async def test_lane_dial_answers_a_refusal_the_python_way(start_upstream: StartUpstream,
                                                          start_gateway: StartGateway) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    refused = HEAD.replace(b"GET /ws ", b"GET /ws?status=403 ")
    for _ in range(3):
        head, reader, writer = await upgrade(gw, refused)
        try:
            assert head.startswith(b"HTTP/1.1 403 ")
            assert b"session=abc123" in head
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            await asyncio.wait_for(reader.readexactly(length), 5)
        finally:
            writer.close()
    assert dialed_by_the_lane(gw) == 2
    assert gw.metrics.value("wsgate_requests_total", route="ws", status="403") == 3
    assert not gw.server.tunnels
    assert lane_of(gw).count() == 0


async def test_lane_dial_moves_on_from_an_instance_that_times_out(start_upstream: StartUpstream,
                                                                  start_gateway: StartGateway) -> None:
    good = await start_upstream("good")
    with silent_listener() as full:
        endpoints = (Endpoint("127.0.0.1", good), Endpoint("127.0.0.1", full))
        gw = await start_gateway(config(route("ws", "lb:ws://svc", ["Path=/**"],
                                              metadata=RouteMetadata(connect_timeout_s=0.2))),
                                 provider=StaticProvider({"svc": endpoints}))
        # The first (Python's) goes to `good`; the second, the lane's, to the full listener, then on to `good`.
        assert [await upgraded_name(gw) for _ in range(3)] == [b"good"] * 3
        assert dialed_by_the_lane(gw) == 2
        assert gw.metrics.value("wsgate_upstream_errors_total", route="ws", instance=endpoints[1].address,
                                reason="timeout") == 1


async def test_lane_dial_writes_its_access_log_line(start_upstream: StartUpstream, start_gateway: StartGateway,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"]), access_log=True))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        assert [await upgraded_name(gw) for _ in range(2)] == [b"upstream"] * 2
        await all_closed(gw)  # the lane's own dial is logged when Python takes its quiet report
    assert dialed_by_the_lane(gw) == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    expected = f'"GET /ws HTTP/1.1" 101 route=ws instance=127.0.0.1:{port}'
    assert sum(expected in line for line in lines) == 2, lines


class Silent:
    """An instance that reads each request and never answers, until the gateway hangs up."""

    def __init__(self) -> None:
        self.heard = 0
        self.hung_up = 0
        self.changed = asyncio.Condition()

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self._count("heard")
            await reader.read()
            await self._count("hung_up")
        finally:
            writer.close()

    async def _count(self, name: str) -> None:
        async with self.changed:
            setattr(self, name, getattr(self, name) + 1)
            self.changed.notify_all()

    async def reach(self, name: str, n: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: getattr(self, name) >= n), 5)


@pytest.fixture
async def silent() -> AsyncIterator[tuple[Silent, int]]:
    instance = Silent()
    server = await asyncio.start_server(instance, "127.0.0.1", 0)
    yield instance, int(server.sockets[0].getsockname()[1])
    server.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()


async def test_drain_aborts_the_lanes_own_dials_in_flight(silent: tuple[Silent, int],
                                                          start_gateway: StartGateway) -> None:
    instance, port = silent
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    clients = []
    for n in (1, 2):
        clients.append(await asyncio.open_connection("127.0.0.1", gw.port))
        clients[-1][1].write(HEAD)
        await instance.reach("heard", n)
    lane = lane_of(gw)
    assert dialed_by_the_lane(gw) == 1
    assert len(lane.upgrades.pending) == 1 and lane.count() == 2  # both count as the worker's while dialing
    await asyncio.wait_for(gw.server.drain(0.2), 5)
    await instance.reach("hung_up", 2)
    for reader, writer in clients:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # every descriptor of the client's connection closed
        writer.close()
    assert not gw.server.tunnels
    assert lane.count() == 0


async def test_lane_dial_plans_only_decisions_it_keeps(start_upstream: StartUpstream, start_gateway: StartGateway,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = await start_upstream()
    # A time predicate makes every decision afresh: a plan would serve no later upgrade, so none is made.
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**", "After=2017-01-20T17:42:47Z"])))
    upgrades = lane_of(gw).upgrades
    plans: list[object] = []
    plan = upgrades._plan
    monkeypatch.setattr(upgrades, "_plan", lambda *args: plans.append(args) or plan(*args))
    assert [await upgraded_name(gw) for _ in range(3)] == [b"upstream"] * 3
    assert not plans
    assert dialed_by_the_lane(gw) == 0
    assert upgrades.upgraded == 3


async def test_lane_dial_reports_reach_python_without_a_reader(start_upstream: StartUpstream,
                                                                start_gateway: StartGateway,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    port = await start_upstream()
    gw = await start_gateway(config(route("ws", f"ws://127.0.0.1:{port}", ["Path=/**"])))
    upgrades = lane_of(gw).upgrades
    heard = asyncio.Event()
    upgraded = upgrades._on_lane_upgraded  # what the plan hands the relay (bound when the plan is made)

    def hear(arg: object, tunnel: object) -> None:
        upgraded(arg, tunnel)  # type: ignore[arg-type]
        heard.set()

    monkeypatch.setattr(upgrades, "_on_lane_upgraded", hear)
    assert [await upgraded_name(gw) for _ in range(2)] == [b"upstream"] * 2
    # Nobody reads the registry and no connection wakes the lane: the relay's quiet report of the second (the
    # lane's own dial) still arrives by itself, QUIET_REPORT_MS later at the latest.
    await asyncio.wait_for(heard.wait(), 5)
    assert dialed_by_the_lane(gw) == 1 and upgrades.upgraded == 2
